"""Stage ``report``: the comparison table, the fraqat-vs-qat tests, the claim check and plots.

Reads ``reports/eval/*.json`` (+ ``noise.json``), ``reports/train/*.{json,tsv}`` and the samples
files for the methods and seeds in params; writes ``reports/comparison.{md,csv}``,
``reports/metrics.json`` (flat keys such as ``fid.fraqat`` for ``dvc exp show``) and
``reports/plots/{fid,training,samples}.png``. Missing runs are listed, not fatal, so a partial
matrix still reports; no evaluation result at all is an error.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import torch

from fraqat import paths
from fraqat.errors import FraqatError
from fraqat.io import atomic_path, load_tensors, read_json, write_json, write_text
from fraqat.models.rectified_flow import seeded_noise
from fraqat.params import Params
from fraqat.report import fair, plots
from fraqat.report.probes import PROBE_POINTS, probe_markdown, probe_summary
from fraqat.report.stats import BOOTSTRAP_RESAMPLES, paired_bootstrap, paired_ttest
from fraqat.report.tables import fmt as _fmt
from fraqat.report.tables import isnan as _isnan
from fraqat.report.tables import markdown_table as md_table

log = logging.getLogger(__name__)

NOISE = "noise"
BASELINE, CANDIDATE = "qat", "fraqat"
CLAIM_RANGE = (4.0, 7.0)  # paper: FraQAT's FID 4-7 % lower than standard QAT at W4A8
SAMPLE_COLUMNS = 20
CSV_COLUMNS = ["method", "bits", "n_seeds", "fid_mean", "fid_std", "fid_delta_pct_vs_qat",
               "prompt_accuracy", "teacher_psnr_db", "teacher_mse_mean", "teacher_mse_std",
               "heldout_loss_mean", "heldout_loss_std", "model_size_mb", "train_wall_s"]
TESTED = {"heldout_distill_loss": "held-out distillation loss", "teacher_mse": "teacher MSE",
          "fid": "FID"}


# ----------------------------------------------------------------------------- loading

def report_methods(params: Params) -> list[str]:
    return ["fp", *params.methods]


def load_eval_rows(params: Params) -> tuple[pd.DataFrame, list[str]]:
    """One row per (method, seed) evaluation JSON, plus the noise row; and what is missing."""
    rows, missing = [], []
    for method in report_methods(params):
        seeds = (sorted(_seeds_on_disk(method)) or [0]) if method == "fp" else params.seeds
        for seed in seeds:
            path = paths.eval_metrics(method, seed)
            if path.exists():
                rows.append(read_json(path))
            else:
                missing.append(paths.run_name(method, seed))
    noise = paths.EVAL_REPORTS / f"{NOISE}.json"
    if noise.exists():
        rows.append(read_json(noise))
    if not rows:
        raise FraqatError(f"no evaluation results in {paths.EVAL_REPORTS} "
                          "(run `fraqat evaluate --method fp --seed 0` and the other evaluations)")
    return pd.DataFrame(rows), missing


def _seeds_on_disk(method: str) -> list[int]:
    out = []
    for p in paths.EVAL_REPORTS.glob(f"{method}-s*.json"):
        suffix = p.stem.removeprefix(f"{method}-s")
        if suffix.isdigit():
            out.append(int(suffix))
    return out


def load_train(params: Params) -> tuple[pd.DataFrame, dict[tuple[str, int], pd.DataFrame]]:
    """Train summaries (method, seed, final_loss, steps, wall_seconds) and the per-step logs."""
    summaries, logs = [], {}
    for method in params.methods:
        for seed in params.seeds:
            if paths.train_metrics(method, seed).exists():
                summaries.append(read_json(paths.train_metrics(method, seed)))
            if paths.train_log(method, seed).exists():
                logs[(method, seed)] = pd.read_csv(paths.train_log(method, seed), sep="\t")
    cols = ["method", "seed", "final_loss", "steps", "wall_seconds"]
    return pd.DataFrame(summaries, columns=cols) if summaries else pd.DataFrame(columns=cols), logs


# ----------------------------------------------------------------------------- the table

def bits_label(weight_bits: float | None, act_bits: float | None, method: str) -> str:
    if method == NOISE:
        return "-"
    if weight_bits is None or _isnan(weight_bits):
        return "FP32"
    act = "" if act_bits is None or _isnan(act_bits) else f"A{act_bits:g}"
    return f"W{weight_bits:g}{act}"


def _std(s: pd.Series) -> float:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.std(ddof=1)) if len(s) >= 2 else float("nan")


def _mean(s: pd.Series) -> float:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.mean()) if len(s) else float("nan")


def comparison_table(evals: pd.DataFrame, train: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Aggregate over seeds: one row per method in ``order`` (then noise), CSV_COLUMNS (and
    ``clip_score`` after ``prompt_accuracy`` when any evaluation has one)."""
    rows = []
    for method in [*order, NOISE]:
        ev = evals[evals["method"] == method]
        if ev.empty:
            continue
        tr = train[train["method"] == method] if not train.empty else train
        first = ev.iloc[0]
        rows.append({
            "method": method,
            "bits": bits_label(first.get("weight_bits"), first.get("act_bits"), method),
            "n_seeds": len(ev),
            "fid_mean": _mean(ev["fid"]), "fid_std": _std(ev["fid"]),
            "prompt_accuracy": _mean(ev["prompt_accuracy"]),
            "clip_score": _mean(ev["clip_score"]) if "clip_score" in ev else float("nan"),
            "teacher_psnr_db": _mean(ev["teacher_psnr"]),
            "teacher_mse_mean": _mean(ev["teacher_mse"]),
            "teacher_mse_std": _std(ev["teacher_mse"]),
            "heldout_loss_mean": _mean(ev["heldout_distill_loss"]),
            "heldout_loss_std": _std(ev["heldout_distill_loss"]),
            "model_size_mb": _mean(ev["model_size_mb"]),
            "train_wall_s": _mean(tr["wall_seconds"]) if len(tr) else float("nan")})
    table = pd.DataFrame(rows)
    base = table.loc[table["method"] == BASELINE, "fid_mean"]
    ref = float(base.iloc[0]) if len(base) else float("nan")
    table["fid_delta_pct_vs_qat"] = 100.0 * (table["fid_mean"] - ref) / ref
    columns = list(CSV_COLUMNS)
    if table["clip_score"].notna().any():  # a real pipeline scored with eval.clip_path
        columns.insert(columns.index("prompt_accuracy") + 1, "clip_score")
    return table[columns]


def markdown_table(table: pd.DataFrame) -> str:
    clip = "clip_score" in table.columns
    head = ["method", "W/A bits", "FID (mean ± std)", "Δ% FID vs qat", "prompt acc.",
            *(["CLIP score"] if clip else []),
            "teacher PSNR dB / MSE", "held-out distill loss", "size MB", "train wall s", "seeds"]
    rows = []
    for r in table.itertuples(index=False):
        delta = "-" if _isnan(r.fid_delta_pct_vs_qat) else f"{r.fid_delta_pct_vs_qat:+.1f}%"
        fidelity = f"{_fmt(r.teacher_psnr_db, 1)} / {_fmt(r.teacher_mse_mean, 3)}"
        rows.append([r.method, r.bits, _fmt(r.fid_mean, 2, r.fid_std), delta,
                     _fmt(r.prompt_accuracy, 3), *([_fmt(r.clip_score, 2)] if clip else []),
                     fidelity,
                     _fmt(r.heldout_loss_mean, 3, r.heldout_loss_std), _fmt(r.model_size_mb, 3),
                     _fmt(r.train_wall_s, 1), str(r.n_seeds)])
    return md_table(head, rows)


# ----------------------------------------------------------------------------- statistics

def per_item_values(method: str, seed: int, metric: str) -> np.ndarray | None:
    """Per-item values behind a metric, from the samples files (None if unavailable)."""
    path = paths.samples_path(method, seed)
    if not path.exists():
        return None
    t = load_tensors(path)
    if metric == "heldout_distill_loss":
        return t["heldout_sq_err"].double().numpy()
    if metric == "teacher_mse":
        fp = paths.samples_path("fp", 0)
        if not fp.exists():
            return None
        ref = load_tensors(fp)["samples"].clamp(-1, 1)
        err = (t["samples"].clamp(-1, 1) - ref).pow(2).flatten(1).mean(1)
        return err.double().numpy()
    return None


def compare(evals: pd.DataFrame, metric: str) -> dict | None:
    """fraqat vs qat on ``metric``: means, Δ%, paired t-test over seeds, bootstrap."""
    pivot = evals[evals["method"].isin([BASELINE, CANDIDATE])].pivot_table(
        index="seed", columns="method", values=metric, aggfunc="first")
    if BASELINE not in pivot or CANDIDATE not in pivot:
        return None
    pivot = pivot.dropna()
    if pivot.empty:
        return None
    seeds = [int(s) for s in pivot.index]
    qat, fra = pivot[BASELINE].to_numpy(float), pivot[CANDIDATE].to_numpy(float)
    out = {"metric": metric, "seeds": seeds, "qat": float(qat.mean()),
           "fraqat": float(fra.mean()),
           "delta_pct": 100.0 * (fra.mean() - qat.mean()) / qat.mean() if qat.mean() else None,
           "ttest_t": None, "ttest_p": None, "ci_pct": None, "bootstrap": None}
    if (test := paired_ttest(fra, qat)) is not None:
        out["ttest_t"], out["ttest_p"], out["ci_pct"] = test["t"], test["p"], test["ci_pct"]
    fras = [f for s in seeds if (f := per_item_values(CANDIDATE, s, metric)) is not None]
    qats = [q for s in seeds if (q := per_item_values(BASELINE, s, metric)) is not None]
    if len(fras) == len(qats) == len(seeds) and len({len(x) for x in fras + qats}) == 1:
        out["bootstrap"] = paired_bootstrap(np.stack(fras), np.stack(qats))
    return out


def _p(p: float, resamples: int, eq: bool = False) -> str:
    """A bootstrap p-value; 0 means below the resolution 1/resamples."""
    if p == 0:
        return f"< {1 / resamples:.1g}"
    return f"{'= ' if eq else ''}{p:.3g}"


def tests_markdown(results: list[dict]) -> str:
    head = ["metric", "qat", "fraqat", "Δ% (fraqat vs qat)", "95% CI of Δ% over seeds",
            "paired t-test over seeds", "bootstrap 95% CI of fraqat − qat", "bootstrap p"]
    rows = []
    for r in results:
        seed_ci = "n/a" if r["ci_pct"] is None else \
            f"[{r['ci_pct'][0]:+.1f}%, {r['ci_pct'][1]:+.1f}%]"
        t = (f"t={r['ttest_t']:.2f}, p={r['ttest_p']:.3g} (n={len(r['seeds'])})"
             if r["ttest_p"] is not None else f"n/a (n={len(r['seeds'])} seed(s); needs ≥ 2)")
        b = r["bootstrap"]
        ci = f"[{b['ci_low']:.3g}, {b['ci_high']:.3g}]" if b else "n/a (no per-item data)"
        bp = _p(b["p"], b["resamples"]) if b else "-"
        delta = "-" if r["delta_pct"] is None else f"{r['delta_pct']:+.1f}%"
        rows.append([TESTED[r["metric"]], _fmt(r["qat"], 4), _fmt(r["fraqat"], 4), delta,
                     seed_ci, t, ci, bp])
    return md_table(head, rows)


# ----------------------------------------------------------------------------- the claim

def claim_verdict(fid_delta_pct: float | None) -> tuple[bool | None, str]:
    """Reproduced when FraQAT's mean FID is at least 4 % below QAT's (the claim's low end)."""
    lo, hi = CLAIM_RANGE
    if fid_delta_pct is None or _isnan(fid_delta_pct):
        return None, "**Verdict: cannot be tested** (no FID for both qat and fraqat)."
    d = fid_delta_pct
    if d <= -lo:
        extent = "within the claimed range" if d >= -hi else "more than claimed"
        return True, (f"**Verdict: REPRODUCED** — FraQAT's FID is {-d:.1f}% lower than QAT's "
                      f"({extent}).")
    if d < 0:
        return False, (f"**Verdict: NOT REPRODUCED** — FraQAT's FID is lower, but only by "
                       f"{-d:.1f}%, less than the claimed {lo:g}%.")
    return False, (f"**Verdict: NOT REPRODUCED** — FraQAT's FID is {d:.1f}% higher than "
                   "QAT's.")


def claim_paragraph(params: Params, table: pd.DataFrame, results: dict[str, dict],
                    feature_space: str, num_images: int) -> tuple[bool | None, str]:
    by = table.set_index("method")
    setting = f"W{params.bits:g}A{params.act_bits:g}"
    lines = ["The paper (FraQAT, arXiv 2510.14823) claims that at W4A8 FraQAT reaches an FID "
             f"{CLAIM_RANGE[0]:g}–{CLAIM_RANGE[1]:g}% lower than standard QAT."]
    fid = results.get("fid")
    delta = fid["delta_pct"] if fid else None
    if fid:
        q, f = by.loc[BASELINE], by.loc[CANDIDATE]
        lines.append(f"Measured here ({setting}, {len(fid['seeds'])} seed(s), {num_images} "
                     f"samples, {feature_space} features): FID fraqat "
                     f"{_fmt(f.fid_mean, 2, f.fid_std)} vs qat {_fmt(q.fid_mean, 2, q.fid_std)}, "
                     f"Δ = {delta:+.1f}%.")
        spread = np.nanmax([f.fid_std, q.fid_std, 0.0])
        if spread > 0 and abs(f.fid_mean - q.fid_mean) < spread:
            lines.append("The FID difference is smaller than the seed-to-seed spread.")
    reproduced, verdict = claim_verdict(delta)
    lines.append(verdict)
    if (params.bits, params.act_bits) != (4.0, 8.0):
        lines.append(f"Note: the claim is stated at W4A8; this run is at {setting}, so it tests "
                     "the claim's direction, not its size.")
    for metric in ("heldout_distill_loss", "teacher_mse"):
        r = results.get(metric)
        if not r or r["delta_pct"] is None:
            continue
        better = r["fraqat"] < r["qat"]
        sig = []
        if r["ttest_p"] is not None:
            sig.append(f"paired t-test p={r['ttest_p']:.3g}")
        if r["bootstrap"]:
            b = r["bootstrap"]
            sig.append(f"bootstrap p {_p(b['p'], b['resamples'], eq=True)}")
        lines.append(f"On the sensitive {TESTED[metric]} FraQAT is {abs(r['delta_pct']):.1f}% "
                     f"{'lower' if better else 'higher'} than QAT"
                     f"{' (' + ', '.join(sig) + ')' if sig else ''}: "
                     f"{'the claimed direction' if better else 'against the claimed direction'}.")
    return reproduced, " ".join(lines)


# ----------------------------------------------------------------------------- sample rows

def sample_rows(params: Params) -> list[tuple[str, torch.Tensor]]:
    """Each method's first available seed, then the evaluation noise itself."""
    rows = []
    for method in report_methods(params):
        seeds = [0] if method == "fp" else params.seeds
        for seed in seeds:
            p = paths.samples_path(method, seed)
            if p.exists():
                rows.append((f"{method} s{seed}", load_tensors(p)["samples"]))
                break
    shape = tuple(rows[0][1].shape[1:]) if rows else (1, 8, 8)  # a real pipeline: RGB
    noise = seeded_noise(params.eval.num_images, shape, params.eval.seed)
    return rows + [(NOISE, noise)]


# ----------------------------------------------------------------------------- outputs

def flat_metrics(table: pd.DataFrame, results: dict[str, dict], reproduced: bool | None,
                 probes: pd.DataFrame | None = None) -> dict:
    """Flat ``<metric>.<method>`` keys (finite numbers only) for ``dvc metrics``/``exp show``."""
    names = {"fid_mean": "fid", "fid_std": "fid_std", "fid_delta_pct_vs_qat": "fid_delta_pct",
             "prompt_accuracy": "prompt_accuracy", "teacher_psnr_db": "teacher_psnr",
             "teacher_mse_mean": "teacher_mse", "heldout_loss_mean": "heldout_loss",
             "heldout_loss_std": "heldout_loss_std", "teacher_mse_std": "teacher_mse_std",
             "model_size_mb": "model_size_mb",
             "train_wall_s": "train_wall_s", "clip_score": "clip_score"}
    out: dict[str, float | bool] = {}
    for r in table.to_dict("records"):
        for col, key in names.items():
            v = r.get(col, float("nan"))
            if not _isnan(v) and math.isfinite(v):
                out[f"{key}.{r['method']}"] = float(v)
    for metric, res in results.items():
        short = {"heldout_distill_loss": "heldout_loss"}.get(metric, metric)
        ci, boot = res["ci_pct"] or [None, None], res["bootstrap"] or {}
        for key, v in (("delta_pct", res["delta_pct"]), ("ttest_p", res["ttest_p"]),
                       ("ci_low_pct", ci[0]), ("ci_high_pct", ci[1]),
                       ("bootstrap_p", boot.get("p"))):
            if v is not None and math.isfinite(v):
                out[f"test.{short}.{key}"] = float(v)
    for r in ([] if probes is None else probes.to_dict("records")):
        for point in PROBE_POINTS:
            if not _isnan(r[point]):
                out[f"probe.{point}.{r['method']}"] = float(r[point])
    if reproduced is not None:
        out["claim.reproduced"] = bool(reproduced)
    return out


def run(params: Params) -> None:
    evals, missing = load_eval_rows(params)
    train, logs = load_train(params)
    table = comparison_table(evals, train, report_methods(params))
    results = {m: r for m in TESTED if (r := compare(evals, m)) is not None}
    probes = probe_summary(logs, params.bits)
    tune = read_json(paths.TUNE) if paths.TUNE.exists() else {}
    fair_rows = fair.comparisons(evals, list(params.methods), params.schedule.control_of)
    fair_verdict = fair.verdict(fair_rows, evals, tune.get("chosen", {}),
                                params.schedule.control_of,
                                f"W{params.bits:g}A{params.act_bits:g}, "
                                f"{len(params.seeds)} seed(s)")
    first = evals.iloc[0]
    reproduced, claim = claim_paragraph(params, table, results, str(first["feature_space"]),
                                        int(first["num_images"]))

    md = ["# FraQAT vs standard QAT: comparison", "",
          f"Setting: W{params.bits:g}A{params.act_bits:g}, seeds {params.seeds}, "
          f"{int(first['num_images'])} samples per model, {first['feature_space']} feature "
          f"space (FID to {first.get('fid_reference') or 'the held-out real digits'}). Mean ± "
          "sample std over seeds; teacher PSNR/MSE against the fp samples from the same "
          "prompts and noise; held-out distillation loss = velocity MSE to the teacher on "
          + ("fixed noised held-out images." if params.model == "tiny-sana" else
             f"{params.model}'s own sampling trajectories from held-out noise draws."),
          "", markdown_table(table), "",
          "## The fair protocol: each method at its own learning rate", "",
          f"Every method trains at the peak learning rate that gave it the lowest loss on the "
          f"validation split (train-split images that QAT never trains on; the held-out split "
          f"above is never used to choose), `{params.train.lr_schedule}` learning-rate shape, "
          f"{params.train.warmup_steps} warm-up steps for all; grid, budget and validation "
          f"losses from `reports/tune.json` ({tune.get('steps', '-')} steps, seed "
          f"{tune.get('seed', '-')}):", "", fair.tune_markdown(tune) if tune else "(no tuning)",
          "", fair.comparisons_markdown(fair_rows), "",
          "Why the protocol: the earlier default table gave every method one cosine over the "
          "run at lr 1e-4, which left FraQAT's 4-bit stage at 0.04–4 % of the peak rate; its "
          "'+562 %' held-out loss against QAT measured that schedule, not fractional bits "
          "(with a constant rate it was +20 %, 0.0249 vs 0.0207 over 3 seeds: "
          "`benchmarks/SCHEDULES.md` §1).", "",
          "## fraqat vs qat", "",
          "Paired over seeds: `scipy.stats.ttest_rel` (when ≥ 2 seeds) and a hierarchical "
          f"paired bootstrap ({BOOTSTRAP_RESAMPLES} resamples of seeds, then of items within "
          "each seed: held-out points or samples, paired by index; with few seeds it "
          "measures item noise more than seed-to-seed variance).", ""]
    md += [tests_markdown(list(results.values())) if results else "No qat/fraqat pair to test.",
           "", "## Why: the loss at the target bits through training", "",
           f"The held-out distillation loss measured at W{params.bits:g} (`target_loss` in "
           "`reports/train/*.tsv`), mean over seeds. A progressive schedule helps only if its "
           "high-bit stages already lower this number.", "",
           probe_markdown(probes, params.bits), "", "## The paper's claim", "", fair_verdict,
           "", claim, ""]
    if missing:
        md += [f"Missing evaluations (not in the table): {', '.join(missing)}.", ""]

    plots.plot_fid(table, paths.PLOTS / "fid.png", NOISE)  # plots first: likeliest to fail
    plots.plot_training(logs, paths.PLOTS / "training.png")
    plots.plot_mosaic(sample_rows(params), paths.PLOTS / "samples.png", SAMPLE_COLUMNS)
    with atomic_path(paths.COMPARISON_CSV) as tmp:
        table.to_csv(tmp, index=False)
    write_text(paths.COMPARISON_MD, "\n".join(md))
    write_json(paths.METRICS, {**flat_metrics(table, results, reproduced, probes),
                               **fair.flat(fair_rows)})
    log.info("report: %d methods, verdict %s; missing: %s", len(table),
             {True: "reproduced", False: "not reproduced", None: "n/a"}[reproduced],
             ", ".join(missing) or "none")
