"""The paper's regime as DVC experiments: teacher outliers, lower target bits, a high learning
rate, and the stability of training, outside the default run.

Each cell is one DVC experiment (``dvc exp run --queue``) of the whole pipeline; ``collect``
reads ``dvc exp show --json`` and writes ``reports/regime.{md,csv}``: per cell and method the
held-out loss and teacher MSE vs standard QAT (Δ% with the paired t-test's 95 % interval over
seeds), the largest loss spike, the divergence rate and the final loss.

    python -m pipelines.experiments.regime queue --target train
    dvc queue start -j 1                      # wait for `dvc queue status`
    python -m pipelines.experiments.regime collect
    python -m pipelines.experiments.regime render  # regime.md again from regime.csv + gpu.json

``reports/regime/gpu.json`` (``pipelines.experiments.regime_gpu`` on the GPU machine) adds a
"GPU machine" section with the same columns.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from fraqat.io import write_text
from fraqat.report.factorial import ARMS as ARM_METHODS
from fraqat.report.fair import FRACTIONAL, WIN_PCT
from fraqat.report.stats import (
    classify,
    delta_pct,
    holm,
    interval_from_raw,
    log_ratio,
    paired_ttest,
)
from fraqat.report.tables import fmt, fmt_delta, markdown_table
from fraqat.report.words import fmt_effect
from pipelines.experiments.exp_files import metrics_at
from pipelines.experiments.grid import OUTLIERS, exp_run_command
from pipelines.experiments.regime_map import cpu_source as _cpu_source
from pipelines.experiments.regime_map import regime_map

OUT = Path("reports/regime")
GPU_JSON = OUT / "gpu.json"  # regime_gpu's result, copied back from the GPU machine
RUNS_CSV = OUT / "regime_runs.csv"  # one row per (cell, method, seed), written by collect
CPU_JSON = OUT / "cpu.json"  # regime_device's CPU half, when it produced the CPU cells
HIGH_LR = {"tune.lr_grid": "[0.003]"}  # one high rate for every method: no tuning
BASE = {"methods": "[qat,qat-warmup,fraqat-late,fraqat-late-warmup]",
        "schedule.control_of": "fraqat-late",
        "export.method": "qat"}  # export needs a trained method of the cell
ARMS = tuple(ARM_METHODS.values())  # the 2 x 2 factorial every cell runs
MIN_SEEDS = 5  # a cell with fewer seeds is shown but used by no verdict
SPIKES = ("max_spike", "first_update_spike", "stage_start_spike", "steady_spike")
CELLS: dict[str, dict[str, object]] = {
    "w4-lr3e-3": {"bits": 4, **HIGH_LR},
    "w4-outliers-lr3e-3": {"bits": 4, **OUTLIERS, **HIGH_LR},
    "w3-lr3e-3": {"bits": 3, **HIGH_LR},
    "w3-outliers-lr3e-3": {"bits": 3, **OUTLIERS, **HIGH_LR},
    "w2-lr3e-3": {"bits": 2, **HIGH_LR},
    "w4a6-outliers-lr3e-3": {"bits": 4, "act_bits": 6, **OUTLIERS, **HIGH_LR},
    "w4a4-lr3e-3": {"bits": 4, "act_bits": 4, **HIGH_LR},
    "w4-lr1e-2": {"bits": 4, "tune.lr_grid": "[0.01]"},
}
RUN = re.compile(r"reports/(train)/(.+)[-/]s(\d+)\.json$")  # cells may stop at train;
# <method>/s<seed>.json, or <method>-s<seed>.json in experiments committed before that layout


def queue(seeds: str, cells: list[str], target: str | None = None) -> None:
    """Queue ``cells``; ``target`` (e.g. ``train``) stops each at that stage: the held-out
    loss and stability come from the train metrics, without the sample evaluations."""
    for name in cells:
        cmd = exp_run_command(name, {**BASE, "seeds": seeds, **CELLS[name]},
                              [target] if target else [])
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)


def runs(show: list[dict], repo: Path | None = None) -> pd.DataFrame:
    """One row per (cell, method, seed): train and eval metrics of finished experiments of
    ``repo`` (default: the current folder), and the cell's teacher weight statistics."""
    rows: dict[tuple, dict] = {}
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            name = exp.get("name")
            state = (exp.get("executor") or {}).get("state", "success")
            if name not in CELLS or state not in ("success", "done"):  # queued ones show stale
                continue
            for rev in exp.get("revs") or []:
                metrics = {**metrics_at(rev.get("rev", ""), "reports/train", "reports/eval",
                                        files=("reports/teacher.json",), repo=repo),
                           **((rev.get("data") or {}).get("metrics") or {})}
                teacher = (metrics.get("reports/teacher.json") or {}).get("data") or {}
                for path, m in metrics.items():
                    hit = RUN.match(path)
                    if hit and m.get("data"):
                        key = (name, hit[2], int(hit[3]))
                        rows.setdefault(key, {"cell": name, "method": hit[2], "seed": key[2],
                                              **{f"teacher.{k}": v for k, v in teacher.items()
                                                 if k.startswith("max_")}})
                        rows[key].update({f"{hit[1]}.{k}": v for k, v in m["data"].items()})
    return pd.DataFrame(list(rows.values()))


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, method): means, spikes (each part, the largest over seeds) and,
    against ``qat`` of the same cell paired by seed, the log-ratio ``effect`` of the held-out
    loss (primary) and the raw Δ% with its t interval; outcomes from :func:`decide`."""
    out = []
    df = df.copy()
    df["eval.heldout_distill_loss"] = df["train.final_target_loss"]  # the train stage's probe
    for (cell, method), g in df.groupby(["cell", "method"], sort=False):
        row = {"cell": cell, "method": method, "seeds": len(g),
               "heldout_loss": g["eval.heldout_distill_loss"].mean(),
               "heldout_loss_std": g["eval.heldout_distill_loss"].std(),
               "teacher_mse": g.get("eval.teacher_mse", pd.Series(dtype=float)).mean(),
               **{k: g.get(f"train.{k}", pd.Series([float("nan")])).max() for k in SPIKES},
               "divergence_rate": g["train.diverged"].astype(float).mean(),
               "final_train_loss": g["train.final_loss"].mean(), "lr": g["train.lr"].iloc[0],
               "teacher_absmax_over_std": g.get("teacher.max_absmax_over_std",
                                                pd.Series([float("nan")])).iloc[0],
               "teacher_kurtosis": g.get("teacher.max_kurtosis",
                                         pd.Series([float("nan")])).iloc[0]}
        q = df[(df.cell == cell) & (df.method == "qat")].set_index("seed")
        mine = g.set_index("seed")
        both = sorted(set(q.index) & set(mine.index))
        row["effect_heldout"] = None
        for metric, col in (("heldout", "eval.heldout_distill_loss"),
                            ("mse", "eval.teacher_mse")):
            if col not in mine or not both or mine[col].isna().all():
                row[f"d_{metric}"], row[f"ci_{metric}"] = None, None
                continue
            a, b = mine.loc[both, col].to_numpy(float), q.loc[both, col].to_numpy(float)
            test = paired_ttest(a, b)
            row[f"d_{metric}"] = delta_pct(a.mean(), b.mean())
            row[f"ci_{metric}"] = test["ci_pct"] if test else None
            if metric == "heldout" and method != "qat":
                row["effect_heldout"] = log_ratio(a, b)
        out.append(row)
    return decide(pd.DataFrame(out))


def decide(table: pd.DataFrame) -> pd.DataFrame:
    """Outcomes on the held-out loss: for each method, Holm over the cells with ≥ MIN_SEEDS
    seeds (the family a regime verdict rests on), then the symmetric rule; cells with fewer
    seeds are marked and used by no verdict."""
    table = table.copy()
    table["outcome"] = "-"
    for _, g in table[table["method"] != "qat"].groupby("method", sort=False):
        used = [i for i in g.index if table.at[i, "seeds"] >= MIN_SEEDS
                and table.at[i, "effect_heldout"]]
        for i, p in zip(used, holm([table.at[i, "effect_heldout"]["p"] for i in used]),
                        strict=True):
            table.at[i, "effect_heldout"] = {**table.at[i, "effect_heldout"], "p_adj": p}
        for i in g.index:
            table.at[i, "outcome"] = (classify([table.at[i, "effect_heldout"]], WIN_PCT)
                                      if i in used else f"not used (n < {MIN_SEEDS})"
                                      if table.at[i, "seeds"] < MIN_SEEDS else "-")
    return table


def _spike(x: object) -> str:
    return "-" if x is None or pd.isna(x) else f"{x:.1f}×"


def table_markdown(table: pd.DataFrame, arms: tuple[str, ...] = ()) -> str:
    """The per-(cell, method) table of :func:`summarize`'s output; an arm of ``arms`` a cell
    did not run gets a "not run" row."""
    head = ["cell", "teacher abs-max/std, kurtosis", "method", "lr", "seeds", "held-out loss",
            "ratio vs qat (Δ% [95% CI])", "Holm p", "raw Δ% vs qat [95% CI]",
            "largest spike: all / first update / stage starts / steady", "diverged",
            "final train loss", f"outcome (±{WIN_PCT:g} %)"]
    rows = []
    for cell in dict.fromkeys(table["cell"]):
        cell_rows = table[table["cell"] == cell].to_dict("records")
        for r in cell_rows:
            e = r["effect_heldout"]
            rows.append([r["cell"], f"{fmt(r['teacher_absmax_over_std'], 1)}, "
                         f"{fmt(r['teacher_kurtosis'], 1)}", r["method"], f"{r['lr']:g}",
                         str(r["seeds"]), fmt(r["heldout_loss"], 4, r["heldout_loss_std"]),
                         fmt_effect(e) if e else "-", fmt(e.get("p_adj"), 2) if e else "-",
                         fmt_delta(r["d_heldout"], r["ci_heldout"]),
                         " / ".join(_spike(r[k]) for k in SPIKES),
                         f"{r['divergence_rate']:.0%}", fmt(r["final_train_loss"], 4),
                         r["outcome"]])
        ran = {r["method"] for r in cell_rows}
        rows += [[cell, "", m, "", "0", "not run", *["-"] * 6, "-"] for m in arms
                 if m not in ran]
    return markdown_table(head, rows)


def verdict(table: pd.DataFrame) -> str:
    frac = table[table["method"].isin(FRACTIONAL)]
    wins = frac[frac["outcome"] == "wins"]
    unused = table[table["outcome"].str.startswith("not used")]["cell"].unique()
    text = (f"Fractional schedules that beat standard QAT on the held-out loss (estimate ≥ "
            f"{WIN_PCT:g} % lower, Holm-adjusted p < 0.05, over the cells with ≥ 5 "
            "seeds): " +
            (", ".join(f"`{r.method}` in `{r.cell}`" for r in wins.itertuples())
             if len(wins) else "none") + ".")
    if (wins["method"] != "fraqat-late").any():
        text += (" A win of a fractional arm with warm-up is against `qat` without it; the "
                 "regime map's factorial column separates fractional bits from the warm-up.")
    if len(unused):
        text += (f" Cells with fewer than {MIN_SEEDS} seeds ({', '.join(f'`{c}`' for c in unused)})"
                 " are shown but used by no verdict.")
    return text


def gpu_runs(gpu: dict) -> pd.DataFrame:
    """The finished runs of ``pipelines.experiments.regime_gpu``'s JSON, as :func:`runs` rows."""
    teachers = gpu.get("teachers", {})
    rows = [{"cell": r["cell"], "method": r["method"], "seed": r["seed"],
             **{f"train.{k}": r.get(k) for k in ("final_target_loss", *SPIKES, "max_spike_step",
                                                  "diverged", "final_loss", "lr")},
             **{f"teacher.{k}": v for k, v in teachers.get(r["teacher"], {}).items()
                if k.startswith("max_")}}
            for r in gpu.get("runs", []) if r.get("status") == "ok"]
    cells = gpu.get("cell_order") or list(gpu.get("cells", {}))
    methods = list(gpu.get("profile", {}).get("methods", []))
    rank = lambda x, order: order.index(x) if x in order else len(order)  # noqa: E731
    rows.sort(key=lambda r: (rank(r["cell"], cells), rank(r["method"], methods), r["seed"]))
    return pd.DataFrame(rows)


def calls_text(gpu: dict) -> str:
    """`` over 4 device calls (2026-11-28, 2026-12-02)`` for a merged result."""
    calls = gpu.get("calls") or []
    days = sorted({c.get("started", "?")[:10] for c in calls})
    return f" over {len(calls)} device calls ({', '.join(days)})" if len(calls) > 1 else ""


def unfinished_text(runs: list[dict]) -> str:
    """One sentence naming the cells with runs that did not finish (budget, failure), so a
    partial cell is visible beside the table that leaves it out."""
    by_cell: dict[str, list[str]] = {}
    for r in runs:
        by_cell.setdefault(r["cell"], []).append(r["status"])
    parts = [f"`{cell}` {sum(s != 'ok' for s in st)} of {len(st)} ("
             + ", ".join(f"{st.count(k)} {k}" for k in sorted(set(st) - {'ok'})) + ")"
             for cell, st in by_cell.items() if any(s != "ok" for s in st)]
    return ("Unfinished runs (no verdict uses them; the JSON's `stages` keep their log tails): "
            + "; ".join(parts) + ".") if parts else ""


def gpu_section(gpu: dict) -> str:
    """``## GPU machine``: the cells ``regime_gpu`` ran through the stages there."""
    df = gpu_runs(gpu)
    lines = ["## GPU machine", ""]
    runs_all = gpu.get("runs", [])
    done = f"{len(df)} of {len(runs_all)} runs finished" + (
        "" if gpu.get("complete") else " (not complete: budget or failures, see the JSON)")
    teachers = "; ".join(
        f"`{name}` ({', '.join(t.get('cells', []))}): {t.get('num_params', 0) / 1e6:.3g} M "
        f"parameters, width {t['pretrain']['width']} × {t['pretrain']['layers']} layers, "
        f"{t['pretrain']['steps']} pretrain steps (final loss {fmt(t.get('final_loss'), 4)}, "
        f"{fmt(t.get('train_seconds'), 0)} s), outliers {t['outliers']['fraction']:g}"
        for name, t in gpu.get("teachers", {}).items())
    prof = gpu.get("profile", {})
    lines += [f"`python -m pipelines.experiments.regime_gpu` on {gpu.get('device', '?')} (torch "
              f"{gpu.get('torch', '?')}, {gpu.get('started', '?')}): the pipeline's own stages "
              f"without DVC, data `{prof.get('data', {}).get('source', '?')}`, "
              f"{prof.get('train', {}).get('steps', '?')} QAT steps per run, one learning rate "
              f"per cell for every method; {done} in {fmt(gpu.get('elapsed_s'), 0)} s"
              f"{calls_text(gpu)}. "
              f"Teachers: {teachers}.", ""]
    unfinished = unfinished_text(runs_all)
    if unfinished:
        lines += [unfinished, ""]
    if df.empty:
        return "\n".join(lines + ["No finished runs.", ""])
    table = summarize(df)
    return "\n".join(lines + [verdict(table), "", table_markdown(table, ARMS), ""])


def render(table: pd.DataFrame, gpu: dict | None = None,
           cpu_runs: pd.DataFrame | None = None, cpu: dict | None = None) -> str:
    """regime.md: the map (``pipelines.experiments.regime_map``), the CPU and GPU tables.
    ``cpu_runs``: the per-seed rows behind ``table`` (``regime_runs.csv``), for the factorial;
    ``cpu``: ``regime_device``'s CPU JSON, when it produced them (which machine)."""
    machines = {"CPU": (table, cpu_runs)}
    if gpu and len(gpu_runs(gpu)):
        machines["GPU"] = (summarize(gpu_runs(gpu)), gpu_runs(gpu))
    source = _cpu_source(cpu, list(table["cell"].unique()), CELLS)
    return "\n".join([
        "# The paper's regime: outliers, lower bits, a high learning rate, stability", "",
        f"Machines: CPU cells = {source}; GPU cells = "
        "`python -m pipelines.experiments.regime_gpu` / `regime_device` on the GPU (below). "
        "The cells run the whole pipeline up to `train`, one "
        "learning rate for every method (no tuning: the rate is the regime), held-out loss at "
        "the target bits (the train stage's probe of the held-out split; the cells stop at "
        "`train`, so the outcome uses the held-out loss alone). Ratio = geometric mean over "
        "seeds of method / `qat` of the same cell and seed, with the Student-t 95 % interval "
        "of the mean log-ratio (primary); † marks an interval rebuilt from the raw paired "
        "Δ% (cells collected before the per-seed values were kept: the ratio of the means); "
        "raw Δ% beside it. Holm p: adjusted over the cells with ≥ 5 seeds, per method and "
        "machine. Outcome: *wins* / *loses* when the effect is ≥ 4 % with Holm p < 0.05, "
        "*ties* when the interval lies within ±4 %, else *unresolved*. Spikes = loss / running "
        "median of the previous 20 steps of the same bit-width (1.0× = none), reported as the "
        "largest overall, at the first update, in the first 10 steps of each stage, and "
        "elsewhere (steady); diverged = the run ended above the loss of its first target-bit "
        "step. `*-outliers-*`: the teacher's value/output and GLU channel pairs rescaled "
        "(1.5 % of the channels × 50, same FP function; `fraqat/models/outliers.py`).", "",
        regime_map(machines, gpu, read_fair(), cpu_scope()),
        "## CPU cells", "", f"Source: {source}.",
        "", verdict(table), "",
        table_markdown(table, ARMS), "", *([gpu_section(gpu)] if gpu else [])])


def cpu_scope(path: Path = Path("params.yaml")) -> float | None:
    """Parameter count (M) of the CPU cells' teacher transformer: ``params.yaml``'s
    ``pretrain`` block (every CPU cell keeps it), built without weights; None without it."""
    from diffusers import SanaTransformer2DModel

    from fraqat.models.registry import tiny_sana_config
    from fraqat.params import load_params

    if not path.exists():
        return None
    p = load_params(path).pretrain
    with torch.device("meta"):
        model = SanaTransformer2DModel(**tiny_sana_config(p.width, p.layers, p.heads,
                                                          p.patch_size))
    return sum(x.numel() for x in model.parameters()) / 1e6


def read_table(path: Path) -> pd.DataFrame:
    """``regime.csv`` back into :func:`summarize`'s frame (intervals were written as JSON); a
    CSV without per-seed log-ratios gets the raw paired test's interval (marked ``raw``),
    and the outcomes are decided again."""
    table = pd.read_csv(path)
    for col in ("ci_heldout", "ci_mse", "effect_heldout"):
        if col in table:
            table[col] = table[col].map(lambda v: json.loads(v) if isinstance(v, str) else None)
    for col in ("d_heldout", "d_mse"):
        table[col] = table[col].astype(object).where(table[col].notna(), None)
    for k in SPIKES:
        table[k] = table[k] if k in table else float("nan")
    if "effect_heldout" not in table:
        table["effect_heldout"] = [
            interval_from_raw(r.d_heldout, r.ci_heldout, int(r.seeds))
            if r.method != "qat" and r.ci_heldout else None for r in table.itertuples()]
    return decide(table.drop(columns=["outcome"], errors="ignore"))


def write_table(table: pd.DataFrame, path: Path) -> None:
    table.assign(**{c: table[c].map(json.dumps) for c in ("ci_heldout", "ci_mse",
                                                           "effect_heldout")}
                 ).to_csv(path, index=False)


def read_runs() -> pd.DataFrame | None:
    return pd.read_csv(RUNS_CSV) if RUNS_CSV.exists() else None


def read_fair() -> dict | None:
    """The default run's ``fair.*`` metrics (``dvc repro``), if it has been run."""
    path = Path("reports/metrics.json")
    return {k: v for k, v in json.loads(path.read_text()).items() if k.startswith("fair.")} \
        if path.exists() else None


def read_cpu() -> dict | None:
    return json.loads(CPU_JSON.read_text()) if CPU_JSON.exists() else None


def read_gpu() -> dict | None:
    return json.loads(GPU_JSON.read_text()) if GPU_JSON.exists() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The paper's regime through DVC experiments.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("queue")
    q.add_argument("--seeds", default="[0,1,2,3,4]")
    q.add_argument("--cells", nargs="*", default=list(CELLS), choices=list(CELLS))
    q.add_argument("--target", default=None, help="stop each cell at this stage (e.g. train)")
    sub.add_parser("collect")
    sub.add_parser("render", help="redraw regime.md from regime.csv and gpu.json")
    args = ap.parse_args(argv)
    if args.cmd == "queue":
        queue(args.seeds, args.cells, args.target)
        return 0
    if args.cmd == "render":
        write_text(OUT / "regime.md", render(read_table(OUT / "regime.csv"), read_gpu(),
                                             read_runs(), read_cpu()))
        print(f"wrote {OUT}/regime.md")
        return 0
    show = json.loads(subprocess.run(["dvc", "exp", "show", "--json", "--all-commits"],
                                     check=True, capture_output=True, text=True).stdout)
    df = runs(show)
    if df.empty:
        print("no finished regime experiments (dvc queue status)", file=sys.stderr)
        return 1
    table = summarize(df)
    OUT.mkdir(parents=True, exist_ok=True)
    df.to_csv(RUNS_CSV, index=False)  # the per-seed values: log-ratios and the factorial
    write_table(table, OUT / "regime.csv")
    write_text(OUT / "regime.md", render(table, read_gpu(), df))
    print(f"wrote {OUT}/regime{{.md,.csv,_runs.csv}} ({df['cell'].nunique()} cells, "
          f"{len(df)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
