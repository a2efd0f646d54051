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

from fraqat.io import write_text
from fraqat.report.fair import FRACTIONAL, WIN_PCT, outcome
from fraqat.report.stats import delta_pct, paired_ttest
from fraqat.report.tables import fmt, fmt_delta, markdown_table
from pipelines.experiments.grid import OUTLIERS, exp_run_command

OUT = Path("reports/regime")
GPU_JSON = OUT / "gpu.json"  # regime_gpu's result, copied back from the GPU machine
HIGH_LR = {"tune.lr_grid": "[0.003]"}  # one high rate for every method: no tuning
BASE = {"methods": "[qat,qat-warmup,fraqat-late]", "schedule.control_of": "fraqat-late",
        "export.method": "qat"}  # export needs a trained method of the cell
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
RUN = re.compile(r"reports/(train)/(.+)-s(\d+)\.json$")  # cells may stop at train


def queue(seeds: str, cells: list[str], target: str | None = None) -> None:
    """Queue ``cells``; ``target`` (e.g. ``train``) stops each at that stage: the held-out
    loss and stability come from the train metrics, without the sample evaluations."""
    for name in cells:
        cmd = exp_run_command(name, {**BASE, "seeds": seeds, **CELLS[name]},
                              [target] if target else [])
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)


def runs(show: list[dict]) -> pd.DataFrame:
    """One row per (cell, method, seed): train and eval metrics of finished experiments, and
    the cell's teacher weight statistics (``teacher.*``)."""
    rows: dict[tuple, dict] = {}
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            name = exp.get("name")
            state = (exp.get("executor") or {}).get("state", "success")
            if name not in CELLS or state not in ("success", "done"):  # queued ones show stale
                continue
            for rev in exp.get("revs") or []:
                metrics = (rev.get("data") or {}).get("metrics") or {}
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
    out = []
    df = df.copy()
    df["eval.heldout_distill_loss"] = df["train.final_target_loss"]  # the train stage's probe
    for (cell, method), g in df.groupby(["cell", "method"], sort=False):
        row = {"cell": cell, "method": method, "seeds": len(g),
               "heldout_loss": g["eval.heldout_distill_loss"].mean(),
               "heldout_loss_std": g["eval.heldout_distill_loss"].std(),
               "teacher_mse": g.get("eval.teacher_mse", pd.Series(dtype=float)).mean(),
               "max_spike": g["train.max_spike"].max(),
               "divergence_rate": g["train.diverged"].astype(float).mean(),
               "final_train_loss": g["train.final_loss"].mean(), "lr": g["train.lr"].iloc[0],
               "teacher_absmax_over_std": g.get("teacher.max_absmax_over_std",
                                                pd.Series([float("nan")])).iloc[0],
               "teacher_kurtosis": g.get("teacher.max_kurtosis",
                                         pd.Series([float("nan")])).iloc[0]}
        q = df[(df.cell == cell) & (df.method == "qat")].set_index("seed")
        mine = g.set_index("seed")
        both = sorted(set(q.index) & set(mine.index))
        deltas = []
        for metric, col in (("heldout", "eval.heldout_distill_loss"),
                            ("mse", "eval.teacher_mse")):
            if col not in mine or not both or mine[col].isna().all():
                row[f"d_{metric}"], row[f"ci_{metric}"] = None, None
                deltas.append(None)
                continue
            a, b = mine.loc[both, col].to_numpy(float), q.loc[both, col].to_numpy(float)
            test = paired_ttest(a, b)
            row[f"d_{metric}"] = delta_pct(a.mean(), b.mean())
            row[f"ci_{metric}"] = test["ci_pct"] if test else None
            deltas.append(row[f"d_{metric}"])
        known = [d for d in deltas if d is not None]
        row["outcome"] = "-" if method == "qat" or not known else outcome(known)
        ci = row["ci_heldout"]
        if row["outcome"] in ("wins", "loses") and (ci is None or ci[0] <= 0 <= ci[1]):
            row["outcome"] += " (n.s.)"  # the paired interval over seeds includes no change
        out.append(row)
    return pd.DataFrame(out)


def table_markdown(table: pd.DataFrame) -> str:
    """The per-(cell, method) table of :func:`summarize`'s output."""
    head = ["cell", "teacher abs-max/std, kurtosis", "method", "lr", "seeds", "held-out loss",
            "Δ% vs qat [95% CI]",
            "teacher MSE", "Δ% vs qat [95% CI]", "largest spike", "diverged", "final train loss",
            f"outcome (±{WIN_PCT:g} %)"]
    rows = [[r["cell"], f"{fmt(r['teacher_absmax_over_std'], 1)}, "
             f"{fmt(r['teacher_kurtosis'], 1)}", r["method"], f"{r['lr']:g}", str(r["seeds"]),
             fmt(r["heldout_loss"], 4, r["heldout_loss_std"]),
             fmt_delta(r["d_heldout"], r["ci_heldout"]), fmt(r["teacher_mse"], 4),
             fmt_delta(r["d_mse"], r["ci_mse"]), f"{r['max_spike']:.1f}×",
             f"{r['divergence_rate']:.0%}", fmt(r["final_train_loss"], 4), r["outcome"]]
            for r in table.to_dict("records")]
    return markdown_table(head, rows)


def verdict(table: pd.DataFrame) -> str:
    frac = table[table["method"].isin(FRACTIONAL)]
    wins, ns = frac[frac["outcome"] == "wins"], frac[frac["outcome"] == "wins (n.s.)"]
    text = ("Fractional schedules beating standard QAT by ≥ 4 % on the held-out loss, the 95 % "
            "interval excluding no change: " +
            (", ".join(f"`{r.method}` in `{r.cell}`" for r in wins.itertuples())
             if len(wins) else "none") + ".")
    if len(ns):
        text += (" By ≥ 4 % on the mean only (interval includes 0): " +
                 ", ".join(f"`{r.method}` in `{r.cell}`" for r in ns.itertuples()) + ".")
    return text


MAP_METHODS = ("qat", "qat-warmup", "fraqat-late")


def _spike_steps(gpu: dict | None) -> str:
    """Where ``fraqat-late``'s spikes happen, from the GPU runs (their JSON keeps the step)."""
    steps = [r["max_spike_step"] for r in (gpu or {}).get("runs", [])
             if r.get("status") == "ok" and r["method"] == "fraqat-late"]
    if not steps:
        return ""
    first = sum(s <= 1 for s in steps)
    return (f"; in {first} of its {len(steps)} GPU runs the spike is the first update (step "
            "≤ 1): the 8-bit start is almost lossless and takes the full learning rate at once, "
            "where `qat-warmup` ramps it up")


def _cell_row(table: pd.DataFrame, cell: str) -> dict[str, dict]:
    return {r["method"]: r for r in table[table["cell"] == cell].to_dict("records")}


def fair_promotion(fair: dict | None) -> str:
    """Which fractional schedules the fair default table (``reports/metrics.json``'s
    ``fair.*`` keys) finds ≥ 4 % better than tuned QAT on both sensitive metrics."""
    if not fair:
        return "The fair default table (`dvc repro`) has not been run."
    key = "fair.{}.{}_vs_qat.delta_pct"
    tested = [m for m in FRACTIONAL if key.format("heldout_loss", m) in fair]
    wins = [m for m in tested if all(fair.get(key.format(k, m), 0.0) <= -WIN_PCT
                                     for k in ("heldout_loss", "teacher_mse"))]
    return ("In the fair default table (`reports/comparison.md`) " +
            (f"{', '.join(f'`{m}`' for m in wins)} beat tuned QAT by ≥ {WIN_PCT:g} % on both"
             if wins else f"no fractional schedule ({', '.join(f'`{m}`' for m in tested)}) "
             f"beats tuned QAT by ≥ {WIN_PCT:g} % on both, so none is promoted") + ".")


def regime_map(tables: dict[str, pd.DataFrame], gpu: dict | None = None,
               fair: dict | None = None) -> str:
    """``## Regime map``: per machine and cell, the fractional schedule and the warm-up control
    against standard QAT at the same rate, the stability columns, and findings computed from
    them (where FraQAT wins, ties and loses; whether the paper's mechanism shows)."""
    head = ["machine", "cell", "teacher abs-max/std", "`fraqat-late` vs `qat`",
            "`qat-warmup` vs `qat`", "largest spike (qat / warm-up / fraqat-late)",
            "diverged (qat / warm-up / fraqat-late)"]
    rows, wins, warm_beats, spikier, cells, damage = [], [], [], 0, 0, []
    for machine, table in tables.items():
        for cell in dict.fromkeys(table["cell"]):
            by = _cell_row(table, cell)
            if not all(m in by for m in MAP_METHODS):
                continue
            f, w, q = by["fraqat-late"], by["qat-warmup"], by["qat"]
            cells += 1
            spikier += f["max_spike"] > q["max_spike"]
            if f["outcome"] == "wins":
                wins.append(f"`{cell}` ({machine})")
                if w["heldout_loss"] < f["heldout_loss"]:
                    warm_beats.append(f"`{cell}` ({machine})")
            base = _cell_row(table, cell.replace("-outliers", ""))
            if "-outliers" in cell and all(m in base for m in MAP_METHODS):
                damage.append(f"`{cell}` ({machine}): " + ", ".join(
                    f"{m} ×{by[m]['heldout_loss'] / base[m]['heldout_loss']:.1f}"
                    for m in MAP_METHODS))
            rows.append([machine, cell, fmt(q["teacher_absmax_over_std"], 1),
                         f"{fmt_delta(f['d_heldout'], f['ci_heldout'])} {f['outcome']}",
                         f"{fmt_delta(w['d_heldout'], w['ci_heldout'])} {w['outcome']}",
                         " / ".join(f"{by[m]['max_spike']:.0f}×" for m in MAP_METHODS),
                         " / ".join(f"{by[m]['divergence_rate']:.0%}" for m in MAP_METHODS)])
    if not rows:
        return ""
    outcomes = pd.Series([r[3].rsplit(" ", 1)[-1] if "(n.s.)" not in r[3] else "n.s."
                          for r in rows]).value_counts()
    findings = [
        f"- `fraqat-late` vs standard QAT at the same learning rate, held-out loss, {cells} "
        f"cells: wins in {outcomes.get('wins', 0)}, ties in {outcomes.get('ties', 0)}, loses "
        f"in {outcomes.get('loses', 0)}, a ≥ 4 % difference that the 95 % interval does not "
        f"confirm in {outcomes.get('n.s.', 0)}.",
        "- Where it wins (" + (", ".join(wins) or "nowhere") + "), the warm-up control "
        "(standard QAT with a warm-up as long as the high-bit stages) is better still in "
        f"{len(warm_beats)} of {len(wins)}: the gain is the implicit warm-up, not the "
        "fractional bits." if wins else "- `fraqat-late` wins in no cell.",
        f"- Fewer loss spikes (the paper's stability argument): `fraqat-late`'s largest spike "
        f"is above standard QAT's in {spikier} of {cells} cells" + _spike_steps(gpu) + ".",
        "- Outlier damage (held-out loss with outliers / without, same cell otherwise): "
        + ("; ".join(damage) if damage else "no paired cells") + ".",
        "- Promotion to a named schedule needs ≥ 4 % on both sensitive metrics against "
        "*tuned* QAT; these cells hold the rate fixed and measure the held-out loss only. "
        + fair_promotion(fair)]
    return "\n".join(["## Regime map", "", markdown_table(head, rows), "", *findings, ""])


def gpu_runs(gpu: dict) -> pd.DataFrame:
    """The finished runs of ``pipelines.experiments.regime_gpu``'s JSON, as :func:`runs` rows."""
    teachers = gpu.get("teachers", {})
    rows = [{"cell": r["cell"], "method": r["method"], "seed": r["seed"],
             **{f"train.{k}": r[k] for k in ("final_target_loss", "max_spike", "diverged",
                                              "final_loss", "lr")},
             **{f"teacher.{k}": v for k, v in teachers.get(r["teacher"], {}).items()
                if k.startswith("max_")}}
            for r in gpu.get("runs", []) if r.get("status") == "ok"]
    cells = gpu.get("cell_order") or list(gpu.get("cells", {}))
    methods = list(gpu.get("profile", {}).get("methods", []))
    rank = lambda x, order: order.index(x) if x in order else len(order)  # noqa: E731
    rows.sort(key=lambda r: (rank(r["cell"], cells), rank(r["method"], methods), r["seed"]))
    return pd.DataFrame(rows)


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
              f"per cell for every method; {done} in {fmt(gpu.get('elapsed_s'), 0)} s. "
              f"Teachers: {teachers}.", ""]
    if df.empty:
        return "\n".join(lines + ["No finished runs.", ""])
    table = summarize(df)
    return "\n".join(lines + [verdict(table), "", table_markdown(table), ""])


def render(table: pd.DataFrame, gpu: dict | None = None) -> str:
    return "\n".join([
        "# The paper's regime: outliers, lower bits, a high learning rate, stability", "",
        "DVC experiments of the whole pipeline "
        "(`python -m pipelines.experiments.regime queue`), one "
        "learning rate for every method (no tuning: the rate is the regime), held-out loss at "
        "the target bits and sample MSE to the teacher; Δ% against `qat` of the same cell, "
        "paired over seeds (held-out loss: the train stage's probe of the held-out split at the "
        "target bits; the cells stop at `train`, so no teacher MSE: the outcome here uses the "
        "held-out loss alone). "
        "Largest spike = max loss / running median of the previous 20 "
        "steps of the same bit-width (1.0× = no spike); diverged = the run ended above the "
        "loss of its first target-bit step. `*-outliers-*`: the teacher's value/output and "
        "GLU channel pairs rescaled (1.5 % of the channels × 50, same FP function; "
        "`fraqat/models/outliers.py`).", "",
        regime_map({"CPU": table, **({"GPU": summarize(gpu_runs(gpu))} if gpu and
                                     len(gpu_runs(gpu)) else {})}, gpu, read_fair()),
        "## CPU cells (DVC experiments)", "", verdict(table), "", table_markdown(table), "",
        *([gpu_section(gpu)] if gpu else [])])


def read_table(path: Path) -> pd.DataFrame:
    """``regime.csv`` back into :func:`summarize`'s frame (intervals were written as JSON)."""
    table = pd.read_csv(path)
    for col in ("ci_heldout", "ci_mse"):
        table[col] = table[col].map(lambda v: json.loads(v) if isinstance(v, str) else None)
    for col in ("d_heldout", "d_mse"):
        table[col] = table[col].astype(object).where(table[col].notna(), None)
    return table


def read_fair() -> dict | None:
    """The default run's ``fair.*`` metrics (``dvc repro``), if it has been run."""
    path = Path("reports/metrics.json")
    return {k: v for k, v in json.loads(path.read_text()).items() if k.startswith("fair.")} \
        if path.exists() else None


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
        write_text(OUT / "regime.md", render(read_table(OUT / "regime.csv"), read_gpu()))
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
    table.assign(ci_heldout=table["ci_heldout"].map(json.dumps),
                 ci_mse=table["ci_mse"].map(json.dumps)).to_csv(OUT / "regime.csv", index=False)
    write_text(OUT / "regime.md", render(table, read_gpu()))
    print(f"wrote {OUT}/regime.{{md,csv}} ({df['cell'].nunique()} cells, {len(df)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
