"""The schedule ablation through DVC's own experiment machinery.

Each cell is one DVC experiment (``dvc exp run --queue -n NAME -S key=value ...``); the queue
runs them (``dvc queue start``), every stage that a cell does not change is restored from
DVC's run cache, and ``dvc exp show --json`` collects the results into
``reports/ablation.{md,csv}``. The methods compared inside each cell share its budget.

    python -m pipelines.ablation queue --grid quick   # add the cells to DVC's queue
    dvc queue start -j 1                              # run them (dvc queue status to watch)
    python -m pipelines.ablation collect              # reports/ablation.md + .csv
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

# Every cell trains qat, fraqat and the control (qat with only FraQAT's steps at the target).
BASE = {"methods": "[qat,fraqat,qat-target-steps]"}
FINAL70 = {"schedule.final_fraction": 0.7}
CHANNEL = {"quant.granularity": "channel"}
GRIDS: dict[str, dict[str, dict[str, object]]] = {
    # target bits x schedule shape: the paper's equal stages vs most steps at the target
    "quick": {
        "w4-equal": {"bits": 4},
        "w4-final70": {"bits": 4, **FINAL70},
        "w3-equal": {"bits": 3},
        "w3-final70": {"bits": 3, **FINAL70},
        "w4-channel-final70": {"bits": 4, **CHANNEL, **FINAL70},
    },
    # every axis of issue 10 at the default model size, most informative cells first
    "full": {
        "w4-equal": {"bits": 4},
        "w4-final70": {"bits": 4, **FINAL70},
        "w4-channel-final70": {"bits": 4, **CHANNEL, **FINAL70, "seeds": "[0,1,2,3,4]"},
        "w4-final90": {"bits": 4, "schedule.final_fraction": 0.9},
        "w4-step0.25-final70": {"bits": 4, "schedule.step": 0.25, **FINAL70},
        "w4-continuous-final70": {"bits": 4, "schedule.fraqat_kind": "continuous", **FINAL70},
        "w4-restart": {"bits": 4, "train.lr_restart_per_stage": True},
        "w4-final70-x0.5": {"bits": 4, "train.steps": 200, **FINAL70},
        "w4-final70-x2": {"bits": 4, "train.steps": 800, **FINAL70},
        "w3-equal": {"bits": 3},
        "w3-final70": {"bits": 3, **FINAL70},
        "w3-channel-final70": {"bits": 3, **CHANNEL, **FINAL70},
        "w2-final70": {"bits": 2, **FINAL70},
        "w2-channel-final70": {"bits": 2, **CHANNEL, **FINAL70},
        "w4-channel-equal": {"bits": 4, **CHANNEL},
    },
}
METRICS = ("fid", "heldout_loss", "teacher_mse")


def queue(grid: str, seeds: str) -> None:
    for name, overrides in GRIDS[grid].items():
        sets = {**BASE, "seeds": seeds, **overrides}
        cmd = ["dvc", "exp", "run", "--queue", "-n", name]
        for key, value in sets.items():
            cmd += ["-S", f"{key}={value}"]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def experiments(show: list[dict]) -> list[dict]:
    """Rows (name, params, metrics) from ``dvc exp show --json`` (DVC 3 layout)."""
    rows = []
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state", "success")
            if state not in ("success", "done"):  # a running one shows stale metrics
                continue
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                if rev.get("error") or not data:
                    continue
                params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                metrics = (data.get("metrics") or {}).get("reports/metrics.json", {})
                if not metrics.get("data"):  # queued, running or failed: nothing measured
                    continue
                rows.append({"name": exp.get("name") or rev.get("name") or rev.get("rev"),
                             "params": _flatten(params),
                             "metrics": metrics.get("data", {})})
    return rows


def table(rows: list[dict]) -> pd.DataFrame:
    records = []
    for r in rows:
        p, m = r["params"], r["metrics"]
        rec = {"experiment": r["name"], "bits": p.get("bits"),
               "granularity": p.get("quant.granularity"),
               "final_fraction": p.get("schedule.final_fraction"),
               "step": p.get("schedule.step"), "kind": p.get("schedule.fraqat_kind"),
               "lr_restart": p.get("train.lr_restart_per_stage"), "steps": p.get("train.steps"),
               "seeds": len(p.get("seeds") or [])}
        for metric in METRICS:
            qat, fra = m.get(f"{metric}.qat"), m.get(f"{metric}.fraqat")
            rec[f"{metric}.qat"], rec[f"{metric}.fraqat"] = qat, fra
            rec[f"{metric}.delta_pct"] = (100 * (fra - qat) / qat) if qat and fra else None
        records.append(rec)
    return pd.DataFrame(records).sort_values("experiment").reset_index(drop=True)


def write_report(df: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix(".csv"), index=False)
    wins = df[df["heldout_loss.delta_pct"] <= -4.0]
    lines = ["# Ablation: FraQAT vs standard QAT across schedules (DVC experiments)", "",
             "Each row is one `dvc exp run` (see `pipelines/ablation.py`); Δ% = (fraqat − qat) / "
             "qat, negative means FraQAT is better. Held-out loss is the distillation loss at the "
             "deployed bits; teacher MSE the sample MSE to the FP teacher from the same noise.",
             "", df.to_markdown(index=False, floatfmt=".4g"), ""]
    if len(wins):
        lines.append("FraQAT beats standard QAT by ≥ 4 % on the held-out loss in: "
                     + ", ".join(wins["experiment"]) + ".")
    else:
        lines.append("In no cell does FraQAT beat standard QAT by ≥ 4 % on the held-out "
                     "distillation loss at equal budget.")
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Schedule ablation through DVC experiments.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("queue")
    q.add_argument("--grid", choices=sorted(GRIDS), default="quick")
    q.add_argument("--seeds", default="[0,1,2]")
    c = sub.add_parser("collect")
    c.add_argument("--out", type=Path, default=Path("reports/ablation.md"))
    args = ap.parse_args(argv)
    if args.cmd == "queue":
        queue(args.grid, args.seeds)
        return 0
    show = json.loads(subprocess.run(["dvc", "exp", "show", "--json", "--all-commits"], check=True,
                                     capture_output=True, text=True).stdout)
    rows = experiments(show)
    if not rows:
        print("no finished experiments (run `dvc queue start` and wait for `dvc queue status`)",
              file=sys.stderr)
        return 1
    write_report(table(rows), args.out)
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')} ({len(rows)} experiments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
