"""The schedule ablation through DVC's own experiment machinery.

Each cell is one DVC experiment (``dvc exp run --queue -n NAME -S key=value ...``); the queue
runs them (``dvc queue start``), every stage that a cell does not change is restored from
DVC's run cache, and ``dvc exp show --json`` collects the results into ``reports/ablation/``
(markdown, CSV, figures). The methods compared inside each cell share its budget.

    python -m pipelines.experiments.ablation queue --grid quick   # add the cells to DVC's queue
    dvc queue start -j 1                              # run them (dvc queue status to watch)
    python -m pipelines.experiments.ablation collect   # reports/ablation/: md, csv, figures
    python -m pipelines.experiments.ablation render    # the same from the committed CSV

``collect`` also folds in the model-size sweeps run on the GPU machine
(``benchmarks/results/model-size-*.json``, from ``benchmarks/model_size.sh``).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from fraqat import paths
from pipelines.experiments.ablation_report import cell_table, size_table, write_report
from pipelines.experiments.exp_files import read_at
from pipelines.experiments.grid import CHANNEL, FINAL70, exp_run_command
from pipelines.experiments.regime import cpu_scope

# Every cell trains qat, fraqat and the control (qat with only FraQAT's steps at the target).
BASE = {"methods": "[qat,fraqat,qat-target-steps]", "schedule.control_of": "fraqat"}
GRIDS: dict[str, dict[str, dict[str, object]]] = {
    # target bits x schedule shape: the paper's equal stages vs most steps at the target
    "quick": {
        "w4-equal": {"bits": 4},
        "w4-final70": {"bits": 4, **FINAL70},
        "w3-equal": {"bits": 3},
        "w3-final70": {"bits": 3, **FINAL70},
        "w4-channel-final70": {"bits": 4, **CHANNEL, **FINAL70},
    },
    # every axis at the default model size, most informative cells first
    "full": {
        "w4-equal": {"bits": 4},
        "w4-final70": {"bits": 4, **FINAL70},
        "w4-channel-final70": {"bits": 4, **CHANNEL, **FINAL70, "seeds": "[0,1,2,3,4]"},
        "w4-final90": {"bits": 4, "schedule.final_fraction": 0.9},
        "w4-step0.25-final70": {"bits": 4, "schedule.step": 0.25, **FINAL70},
        "w4-continuous-final70": {"bits": 4, "schedule.fraqat_kind": "continuous", **FINAL70},
        "w4-restart": {"bits": 4, "train.lr_schedule": "cosine-per-stage"},
        "w4-final70-x0.5": {"bits": 4, "train.steps": 200, **FINAL70},
        "w4-final70-x2": {"bits": 4, "train.steps": 800, **FINAL70},
        "w3-equal": {"bits": 3},
        "w3-final70": {"bits": 3, **FINAL70},
        "w3-channel-final70": {"bits": 3, **CHANNEL, **FINAL70},
        "w2-final70": {"bits": 2, **FINAL70},
        "w2-channel-final70": {"bits": 2, **CHANNEL, **FINAL70},
    },
}
OUT = Path("reports/ablation")  # not a DVC output: the ablation is not part of `dvc repro`
TRACE_CELLS = ("w4-equal", "w4-final70", "w4-channel-final70", "w3-final70")
TRACE_METHODS = ("qat", "fraqat", "qat-target-steps")


def queue(grid: str, seeds: str) -> None:
    for name, overrides in GRIDS[grid].items():
        cmd = exp_run_command(name, {**BASE, "seeds": seeds, **overrides})
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


def experiments(show: list[dict], repo: Path | None = None) -> list[dict]:
    """Finished rows (name, rev, params, metrics) from ``dvc exp show --json`` (DVC 3 layout).

    A name queued again on a later commit replaces the older run: the newest one is kept.
    """
    rows: dict[str, dict] = {}
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
                name = exp.get("name") or rev.get("name") or rev.get("rev")
                details = read_at(rev.get("rev", ""), "reports/details.json", repo)
                row = {"name": name, "rev": rev.get("rev", ""), "params": _flatten(params),
                       "metrics": {**details, **metrics["data"]},
                       "timestamp": data.get("timestamp") or ""}
                if name not in rows or row["timestamp"] >= rows[name]["timestamp"]:
                    rows[name] = row
    return list(rows.values())


def traces(rows: list[dict]) -> dict[str, dict[str, pd.DataFrame]]:
    """Seed 0's training logs of a few cells, read from the experiments' git commits."""
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for row in rows:
        if row["name"] not in TRACE_CELLS:
            continue
        for method in TRACE_METHODS:
            # this layout, or the one of experiments committed before per-method folders
            for path in (paths.train_log(method, 0), f"reports/train/{method}-s0.tsv"):
                blob = subprocess.run(["git", "show", f"{row['rev']}:{path}"],
                                      capture_output=True, text=True)
                if blob.returncode == 0:
                    break
            if blob.returncode == 0:
                out.setdefault(row["name"], {})[method] = pd.read_csv(io.StringIO(blob.stdout),
                                                                      sep="\t")
    return dict(sorted(out.items(), key=lambda kv: TRACE_CELLS.index(kv[0])))


def load_sweeps(pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path().glob(pattern))]


def teacher() -> str:
    """The cells' teacher in words: ``params.yaml``'s default (every cell keeps it)."""
    size = cpu_scope()
    return f"a {size:.2g} M-parameter teacher on 8×8 digits" if size else \
        "the default teacher on 8×8 digits"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Schedule ablation through DVC experiments.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("queue")
    q.add_argument("--grid", choices=sorted(GRIDS), default="quick")
    q.add_argument("--seeds", default="[0,1,2]")
    for name in ("collect", "render"):
        c = sub.add_parser(name)
        c.add_argument("--out", type=Path, default=OUT)
        c.add_argument("--sweeps", default="benchmarks/results/model-size-*.json",
                       help="glob of model-size sweep JSONs to fold in")
    args = ap.parse_args(argv)
    if args.cmd == "queue":
        queue(args.grid, args.seeds)
        return 0
    if args.cmd == "render":  # the committed cells, without the experiments' commits
        cells = pd.read_csv(args.out / "ablation.csv")
        write_report(cells, size_table(load_sweeps(args.sweeps)), {}, args.out, teacher())
        print(f"rendered {args.out / 'ablation.md'} from {args.out / 'ablation.csv'}")
        return 0
    show = json.loads(subprocess.run(["dvc", "exp", "show", "--json", "--all-commits"], check=True,
                                     capture_output=True, text=True).stdout)
    rows = experiments(show)
    if not rows:
        print("no finished experiments (run `dvc queue start` and wait for `dvc queue status`)",
              file=sys.stderr)
        return 1
    sweeps = load_sweeps(args.sweeps)
    write_report(cell_table(rows), size_table(sweeps), traces(rows), args.out, teacher())
    print(f"wrote {args.out}/ablation.{{md,csv}} and figures ({len(rows)} experiments, "
          f"{len(sweeps)} model-size sweeps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
