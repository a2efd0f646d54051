"""The ablation report: cells from ``dvc exp show`` (+ model-size sweeps) -> markdown, CSV, plots.

Pure functions of their inputs; :mod:`pipelines.experiments.ablation` does the DVC and git I/O.
Δ% is
always (fraqat − qat) / qat: negative means FraQAT is better. The interval is the paired
Student-t interval over seeds (the report stage's ``test.<metric>.ci_*_pct``).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from fraqat.report.stats import paired_ttest
from fraqat.report.tables import fmt_delta, markdown_table
from pipelines.experiments.grid import SENSITIVE, WIN_PCT

CONTROL = "qat-target-steps"


def _num(x: object) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def schedule_label(p: dict) -> str:
    kind = p.get("schedule.fraqat_kind") or "fraqat"
    final = p.get("schedule.final_fraction")
    label = ("continuous decay" if kind == "continuous" else
             f"step {p.get('schedule.step', 0.5):g}") + (
        f", {100 * final:.0f}% at target" if final else ", equal stages")
    restart = p.get("train.lr_schedule") == "cosine-per-stage"
    return label + (", lr restart per stage" if restart else "")


def cell_table(rows: list[dict]) -> pd.DataFrame:
    """One row per experiment: its settings and every number the report uses (CSV layout)."""
    records = []
    for r in rows:
        p, m = r["params"], r["metrics"]
        rec = {"experiment": r["name"], "rev": r.get("rev", ""), "bits": _num(p.get("bits")),
               "granularity": p.get("quant.granularity"), "schedule": schedule_label(p),
               "steps": _num(p.get("train.steps")), "seeds": len(p.get("seeds") or [])}
        for metric in (*SENSITIVE, "fid"):
            for method in ("qat", "fraqat", CONTROL):
                rec[f"{metric}.{method}"] = _num(m.get(f"{metric}.{method}"))
                rec[f"{metric}_std.{method}"] = _num(m.get(f"{metric}_std.{method}"))
            for key in ("delta_pct", "ci_low_pct", "ci_high_pct", "ttest_p"):
                rec[f"{metric}.{key}"] = _num(m.get(f"test.{metric}.{key}"))
        rec["control_delta_pct"] = 100 * (rec["heldout_loss.fraqat"] / rec[
            f"heldout_loss.{CONTROL}"] - 1)
        for point in ("start", "before_target", "final"):
            rec[f"probe.{point}"] = _num(m.get(f"probe.{point}.fraqat"))
        records.append(rec)
    return pd.DataFrame(records).reset_index(drop=True)


def size_table(sweeps: list[dict]) -> pd.DataFrame:
    """Model-size sweeps (``benchmarks/model_size.sh``): Δ% of each fraqat variant vs its QAT.

    Variants pair with ``qat`` (per-tensor) or ``qat-channel`` by seed; the interval is the
    paired Student-t interval over seeds, in % of QAT's mean.
    """
    records = []
    for sweep in sweeps:
        runs = pd.DataFrame(sweep["runs"])
        params = sweep.get("params_count")
        for variant in runs["variant"].unique():
            if variant.startswith("qat"):
                continue
            ref = "qat-channel" if "channel" in variant else "qat"
            rec = {"teacher": sweep["label"], "params_m": params / 1e6 if params else math.nan,
                   "variant": variant, "reference": ref}
            for metric in SENSITIVE:
                pair = runs[runs["variant"].isin([variant, ref])].pivot_table(
                    index="seed", columns="variant", values=metric).dropna()
                a, b = pair[variant].to_numpy(float), pair[ref].to_numpy(float)
                rec[f"{metric}.delta_pct"] = 100 * (a.mean() / b.mean() - 1)
                test = paired_ttest(a, b)
                lo, hi = test["ci_pct"] if test else (math.nan, math.nan)
                rec[f"{metric}.ci_low_pct"], rec[f"{metric}.ci_high_pct"] = lo, hi
                rec[f"{metric}.seeds"] = len(a)
            records.append(rec)
    return pd.DataFrame(records)


def _delta(row: pd.Series | dict, metric: str) -> str:
    d, lo, hi = (row[f"{metric}.{k}"] for k in ("delta_pct", "ci_low_pct", "ci_high_pct"))
    return fmt_delta(d, (lo, hi))


def _mean_std(row: pd.Series, metric: str, method: str) -> str:
    m, s = row[f"{metric}.{method}"], row[f"{metric}_std.{method}"]
    return "-" if math.isnan(m) else f"{m:.4g}" + ("" if math.isnan(s) else f" ± {s:.2g}")


def verdict(lo: float, hi: float) -> str:
    if math.isnan(lo):
        return "untested"
    return "fraqat better" if hi < 0 else "qat better" if lo > 0 else "no significant difference"


def findings(cells: pd.DataFrame, sizes: pd.DataFrame) -> list[str]:
    """The written finding: every sentence is computed from the tables."""
    out = []
    for metric, name in SENSITIVE.items():
        v = cells.apply(lambda r, m=metric: verdict(r[f"{m}.ci_low_pct"], r[f"{m}.ci_high_pct"]),
                        axis=1).value_counts()
        out.append(f"- **{name}** over {len(cells)} cells: QAT significantly better in "
                   f"{v.get('qat better', 0)}, FraQAT significantly better in "
                   f"{v.get('fraqat better', 0)}, no significant difference in "
                   f"{v.get('no significant difference', 0)} (95 % interval over seeds).")
    if cells["heldout_loss.delta_pct"].notna().any():
        best = cells.loc[cells["heldout_loss.delta_pct"].idxmin()]
        worst = cells.loc[cells["heldout_loss.delta_pct"].idxmax()]
        out.append(f"- FraQAT's best cell is `{best['experiment']}` (held-out loss "
                   f"{_delta(best, 'heldout_loss')}, teacher MSE {_delta(best, 'teacher_mse')}); "
                   f"its worst `{worst['experiment']}` ({_delta(worst, 'heldout_loss')}).")
    wins = cells[(cells["heldout_loss.delta_pct"] <= -WIN_PCT)
                 & (cells["teacher_mse.delta_pct"] <= -WIN_PCT)]
    sig = wins[(wins["heldout_loss.ci_high_pct"] < 0) & (wins["teacher_mse.ci_high_pct"] < 0)]
    if len(sig):
        out.append(f"- FraQAT beats standard QAT by ≥ {WIN_PCT:g} % on both sensitive metrics, "
                   "significantly, in: " + ", ".join(f"`{e}`" for e in sig["experiment"]) + ".")
    elif len(wins):
        out.append(f"- FraQAT is ≥ {WIN_PCT:g} % better on both sensitive metrics in "
                   + ", ".join(f"`{e}`" for e in wins["experiment"])
                   + ", but not significantly: no schedule is promoted.")
    else:
        out.append(f"- **In no cell does FraQAT beat standard QAT by ≥ {WIN_PCT:g} % on both "
                   "sensitive metrics at equal budget**, so no schedule is promoted to a named "
                   "default.")
    ctrl = cells.dropna(subset=["control_delta_pct"])
    if len(ctrl):
        beat = ctrl[ctrl["control_delta_pct"] < 0]
        out.append(f"- Control (standard QAT given only the steps FraQAT spends at the target "
                   f"bits): FraQAT's held-out loss is below the control's in {len(beat)} of "
                   f"{len(ctrl)} cells (Δ vs control "
                   f"{ctrl['control_delta_pct'].min():+.0f}% to "
                   f"{ctrl['control_delta_pct'].max():+.0f}%).")
    why = cells.dropna(subset=["probe.before_target", "probe.start"])
    if len(why):
        ratio = why["probe.before_target"] / why["probe.start"]
        reading = ("training at b > target barely moves the weights toward a good low-bit "
                   "solution, so those steps are lost to the target stage" if ratio.median() > 0.8
                   else "the high-bit stages do prepare the weights for the target grid")
        out.append(f"- Why: the held-out loss *measured at the target bits* at the end of the "
                   f"high-bit stages is {ratio.min():.2f}–{ratio.max():.2f}× its value after "
                   f"the first step (median {ratio.median():.2f}×, {len(why)} cells): {reading}.")
    for axis, name in (("steps", "Budget"), ("bits", "Target bits")):
        for line in trend(cells, axis):
            out.append(f"- {name} ({line}).")
    if len(sizes):
        parts = [f"{r['teacher']} ({r['params_m']:.1f} M) {_delta(r, 'heldout_loss')}"
                 for r in sizes[sizes["variant"] == "fraqat-final70"].to_dict("records")]
        out.append("- Model size (GPU sweeps, `fraqat-final70` vs `qat`, held-out loss Δ% "
                   "[95% CI]): " + "; ".join(parts) + ".")
    return out


def trend(cells: pd.DataFrame, axis: str) -> list[str]:
    """Held-out Δ% along one axis, for each setting of the others with ≥ 2 values on it."""
    others = [c for c in ("bits", "granularity", "schedule", "steps") if c != axis]
    lines = []
    for key, g in cells.groupby(others, sort=False):
        if g[axis].nunique() < 2:
            continue
        g = g.sort_values(axis)
        where = ", ".join(f"{k} {v:g}" if isinstance(v, float) else str(v)
                          for k, v in zip(others, key, strict=True))
        lines.append(where + ": held-out loss Δ% " + ", ".join(
            f"{r[axis]:g} → {r['heldout_loss.delta_pct']:+.1f}%" for _, r in g.iterrows()))
    return lines


def plot_deltas(cells: pd.DataFrame, path: Path) -> None:
    """Forest plot: Δ% with its 95 % interval per cell, one panel per sensitive metric."""
    cells = cells.sort_values("experiment")
    fig, axes = plt.subplots(1, len(SENSITIVE), figsize=(11, 0.45 * len(cells) + 1.5),
                             sharey=True)
    for ax, (metric, name) in zip(axes, SENSITIVE.items(), strict=True):
        d = cells[f"{metric}.delta_pct"]
        err = [d - cells[f"{metric}.ci_low_pct"], cells[f"{metric}.ci_high_pct"] - d]
        ax.errorbar(d, range(len(cells)), xerr=err, fmt="o", capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.axvline(-WIN_PCT, color="g", lw=0.8, ls="--")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel(f"{name}: Δ% fraqat vs qat (95% CI over seeds)")
    axes[0].set_yticks(range(len(cells)), cells["experiment"])
    fig.suptitle("FraQAT vs standard QAT per ablation cell (left of 0: FraQAT better; "
                 f"green: the −{WIN_PCT:g}% bar)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_probes(traces: dict[str, dict[str, pd.DataFrame]], path: Path) -> None:
    """The held-out loss at the target bits through training (seed 0), one panel per cell."""
    fig, axes = plt.subplots(1, len(traces), figsize=(4 * len(traces), 3.2), squeeze=False)
    for ax, (cell, logs) in zip(axes[0], traces.items(), strict=True):
        for method, df in logs.items():
            probe = df.dropna(subset=["target_loss"])
            ax.plot(probe["step"], probe["target_loss"], marker=".", label=method)
        ax.set_yscale("log")
        ax.set_title(cell, fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("held-out loss at target bits")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sizes(sizes: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for variant, g in sizes.groupby("variant"):
        g = g.sort_values("params_m")
        ax.plot(g["params_m"], g["heldout_loss.delta_pct"], marker="o", label=variant)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("teacher parameters (M)")
    ax.set_ylabel("held-out loss Δ% vs QAT")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cells_markdown(cells: pd.DataFrame) -> str:
    head = ["cell", "W", "scales", "schedule", "steps", "seeds", "held-out loss qat",
            "fraqat", "Δ% [95% CI]", "p", "teacher MSE qat", "fraqat", "Δ% [95% CI]", "p",
            "FID Δ%", f"control ({CONTROL})"]
    rows = [[f"`{r['experiment']}`", f"{r['bits']:g}", str(r["granularity"]), r["schedule"],
             f"{r['steps']:g}", str(r["seeds"]),
             _mean_std(r, "heldout_loss", "qat"), _mean_std(r, "heldout_loss", "fraqat"),
             _delta(r, "heldout_loss"), f"{r['heldout_loss.ttest_p']:.2g}",
             _mean_std(r, "teacher_mse", "qat"), _mean_std(r, "teacher_mse", "fraqat"),
             _delta(r, "teacher_mse"), f"{r['teacher_mse.ttest_p']:.2g}",
             fmt_delta(r["fid.delta_pct"]), _mean_std(r, "heldout_loss", CONTROL)]
            for _, r in cells.sort_values("experiment").iterrows()]
    return markdown_table(head, rows)


def why_markdown(cells: pd.DataFrame) -> str:
    head = ["cell", "after step 0", "end of the high-bit stages", "end (fraqat)", "end (qat)",
            "end (control)"]
    rows = [[f"`{r['experiment']}`", *("-" if math.isnan(v) else f"{v:.4g}" for v in (
        r["probe.start"], r["probe.before_target"], r["probe.final"], r["heldout_loss.qat"],
        r[f"heldout_loss.{CONTROL}"]))] for _, r in cells.sort_values("experiment").iterrows()]
    return markdown_table(head, rows)


def sizes_markdown(sizes: pd.DataFrame) -> str:
    head = ["teacher", "params (M)", "variant", "vs", "held-out loss Δ% [95% CI]",
            "teacher MSE Δ% [95% CI]", "seeds"]
    rows = [[r["teacher"], f"{r['params_m']:.1f}", r["variant"], r["reference"],
             _delta(r, "heldout_loss"), _delta(r, "teacher_mse"), str(r["heldout_loss.seeds"])]
            for r in sizes.sort_values(["params_m", "variant"]).to_dict("records")]
    return markdown_table(head, rows)


def write_report(cells: pd.DataFrame, sizes: pd.DataFrame,
                 traces: dict[str, dict[str, pd.DataFrame]], out: Path) -> None:
    """``out/ablation.md``, ``out/ablation.csv`` (the cells) and the figures, in ``out``.

    Without ``traces`` (re-rendered from the committed CSV) an existing probe figure is kept.
    """
    out.mkdir(parents=True, exist_ok=True)
    cells.sort_values("experiment").to_csv(out / "ablation.csv", index=False)
    plot_deltas(cells, out / "ablation_deltas.png")
    if traces:
        plot_probes(traces, out / "ablation_probes.png")
    md = ["# Ablation: where do fractional bits beat standard QAT?", "",
          "Each cell is one DVC experiment "
          "(`python -m pipelines.experiments.ablation queue --grid full` → `dvc queue start` → "
          "`python -m pipelines.experiments.ablation collect`): the pipeline's own "
          "teacher, calibration set and stages, with the cell's `-S` overrides. All methods of "
          "a cell share its budget. Δ% = (fraqat − qat) / qat, **negative means FraQAT is "
          "better**; [95% CI] is the paired Student-t interval over seeds, p the paired t-test. "
          "Held-out loss = distillation loss at the deployed bits on held-out images; teacher "
          "MSE = sample MSE to the FP teacher from the same prompts and noise (500 samples, "
          f"20 Euler steps). The control `{CONTROL}` is standard QAT given only the steps "
          "FraQAT spends at the target bits.", "", "## Finding", "", *findings(cells, sizes), "",
          "## Cells", "", cells_markdown(cells), "", "![deltas](ablation_deltas.png)", "",
          "## Why: the loss at the target bits through the stages", "",
          "Held-out distillation loss measured at the target bits (mean over seeds), FraQAT's "
          "at three points, next to where QAT and the control end.", "", why_markdown(cells), ""]
    if (out / "ablation_probes.png").exists():
        md += ["![probes](ablation_probes.png)", ""]
    regime = out.parent / "regime" / "regime.md"
    if regime.exists():  # the paper's regime, written by pipelines.experiments.regime
        body = regime.read_text().split("## Regime map\n", 1)
        if len(body) == 2:
            md += ["## Regime map: outliers, lower bits, a high learning rate", "",
                   "From [`../regime/regime.md`](../regime/regime.md) (`python -m "
                   "pipelines.experiments.regime collect`), where the per-method tables are.", "",
                   body[1].split("\n## ", 1)[0].strip(), ""]
    if len(sizes):
        plot_sizes(sizes, out / "ablation_sizes.png")
        md += ["## Model size (GPU machine)", "",
               "Wider/deeper teachers trained by the pipeline's own stages on an H100 "
               "(`bash benchmarks/model_size.sh OUT.json WIDTH LAYERS HEADS`: prepare, "
               "pretrain, calibrate and teacher stages, then `benchmarks/schedule_sweep.py "
               "--set size`, 400 steps, batch 64). Not DVC experiments: the GPU machine has no "
               "DVC; the raw runs are in `benchmarks/results/model-size-*.json`. Teacher MSE "
               "there is from 200 samples, 10 Euler steps. The 190 k default is the "
               "CPU cells above.", "", sizes_markdown(sizes), "",
               "![sizes](ablation_sizes.png)", ""]
    (out / "ablation.md").write_text("\n".join(md))
