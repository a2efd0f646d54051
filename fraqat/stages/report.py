"""Stage ``report``: the comparison table, the fraqat-vs-qat tests, the claim check and plots.

Reads ``reports/eval/*.json`` (+ ``noise.json``), ``reports/train/*.{json,tsv}`` and the samples
files for the methods and seeds in params; writes ``reports/comparison.{md,csv}``,
``reports/metrics.json`` (the headline: flat keys such as ``fid.fraqat`` for ``dvc exp show``),
``reports/details.json`` (every flat number) and ``reports/plots/{fid,training,samples}.png``.
A smoke run (``smoke: true``, toy sizes) states that it gives no verdict. Missing runs are
listed, not fatal, so a partial matrix still reports; no evaluation result at all is an error.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import torch

from fraqat import paths
from fraqat.backends import backend_of
from fraqat.errors import FraqatError
from fraqat.io import atomic_path, load_tensors, read_json, write_json, write_text
from fraqat.methods import REFERENCE
from fraqat.models.rectified_flow import seeded_noise
from fraqat.params import Params
from fraqat.report import fair, plots
from fraqat.report.claim import TESTED, claim_paragraph, tests_markdown
from fraqat.report.probes import PROBE_POINTS, probe_markdown, probe_summary
from fraqat.report.stats import BOOTSTRAP_RESAMPLES, log_ratio, paired_bootstrap, paired_ttest
from fraqat.report.summary import (
    NOISE,
    comparability,
    comparison_table,
    is_pipeline,
    markdown_table,
)
from fraqat.report.tables import isnan as _isnan

log = logging.getLogger(__name__)

BASELINE = "qat"
CANDIDATES = ("fraqat", "fraqat-late")
SAMPLE_COLUMNS = 20
DETAILS = paths.REPORTS / "details.json"
# What `dvc exp show` carries: per method FID, held-out loss, teacher MSE; the verdict's numbers.
HEADLINE = ("fid.", "heldout_loss.", "teacher_mse.", "test.", "fair.", "claim.")
SMOKE = ("**Smoke run: no verdict.** `smoke: true` (a profile at toy sizes) checks the "
         "plumbing, not the method: its numbers say nothing about the paper's claim.")


# ----------------------------------------------------------------------------- loading

def report_methods(params: Params) -> list[str]:
    return [REFERENCE, *params.methods]


def load_eval_rows(params: Params) -> tuple[pd.DataFrame, list[str]]:
    """One row per (method, seed) evaluation JSON, plus the noise row; and what is missing."""
    rows, missing = [], []
    for method in report_methods(params):
        seeds = (sorted(_seeds_on_disk(method)) or [0]) if method == REFERENCE else params.seeds
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
        fp = paths.samples_path(REFERENCE, 0)
        if not fp.exists():
            return None
        ref = load_tensors(fp)["samples"].clamp(-1, 1)
        err = (t["samples"].clamp(-1, 1) - ref).pow(2).flatten(1).mean(1)
        return err.double().numpy()
    return None


def candidate(params: Params) -> str:
    """The fractional schedule the paper's claim is checked with: the paper's own ``fraqat``
    when the run has it, else ``fraqat-late``."""
    return next((m for m in CANDIDATES if m in params.methods), CANDIDATES[0])


def scope(params: Params) -> str:
    """The scale a sentence may speak for: the teacher, its images, bits and budget."""
    model = backend_of(params).teacher_description(params)
    return f"{model}, W{params.bits:g}A{params.act_bits:g}, {params.train.steps} steps"


def compare(evals: pd.DataFrame, metric: str, cand: str = "fraqat") -> dict | None:
    """``cand`` vs qat on ``metric``: means, Δ%, paired t-test and log-ratio over seeds,
    bootstrap."""
    pivot = evals[evals["method"].isin([BASELINE, cand])].pivot_table(
        index="seed", columns="method", values=metric, aggfunc="first")
    if BASELINE not in pivot or cand not in pivot:
        return None
    pivot = pivot.dropna()
    if pivot.empty:
        return None
    seeds = [int(s) for s in pivot.index]
    qat, fra = pivot[BASELINE].to_numpy(float), pivot[cand].to_numpy(float)
    out = {"metric": metric, "seeds": seeds, "qat": float(qat.mean()),
           "fraqat": float(fra.mean()),
           "delta_pct": 100.0 * (fra.mean() - qat.mean()) / qat.mean() if qat.mean() else None,
           "ttest_t": None, "ttest_p": None, "ci_pct": None, "bootstrap": None,
           "effect": log_ratio(fra, qat)}
    if (test := paired_ttest(fra, qat)) is not None:
        out["ttest_t"], out["ttest_p"], out["ci_pct"] = test["t"], test["p"], test["ci_pct"]
    fras = [f for s in seeds if (f := per_item_values(cand, s, metric)) is not None]
    qats = [q for s in seeds if (q := per_item_values(BASELINE, s, metric)) is not None]
    if len(fras) == len(qats) == len(seeds) and len({len(x) for x in fras + qats}) == 1:
        out["bootstrap"] = paired_bootstrap(np.stack(fras), np.stack(qats))
    return out


# ----------------------------------------------------------------------------- sample rows

def sample_rows(params: Params) -> list[tuple[str, torch.Tensor]]:
    """Each method's first available seed, then the evaluation noise itself."""
    rows = []
    for method in report_methods(params):
        seeds = [0] if method == REFERENCE else params.seeds
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
    cand, where = candidate(params), scope(params)
    results = {m: r for m in TESTED if (r := compare(evals, m, cand)) is not None}
    probes = probe_summary(logs, params.bits)
    tune = read_json(paths.TUNE) if paths.TUNE.exists() else {}
    fair_rows = fair.comparisons(evals, list(params.methods), params.schedule.control_of)
    fair_verdict = fair.verdict(fair_rows, evals, tune.get("chosen", {}),
                                params.schedule.control_of, where)
    first = evals.iloc[0]
    reproduced, claim = claim_paragraph(table, results, where,
                                        f"W{params.bits:g}A{params.act_bits:g}", cand)
    if params.smoke:
        reproduced, claim, fair_verdict = None, SMOKE, SMOKE

    md = ["# FraQAT vs standard QAT: comparison", "",
          f"Setting: W{params.bits:g}A{params.act_bits:g}, seeds {params.seeds}, "
          f"{int(first['num_images'])} samples per model, {first['feature_space']} feature "
          f"space (FID to {first.get('fid_reference') or 'the held-out real digits'}). Mean ± "
          "sample std over seeds; teacher PSNR/MSE against the fp samples from the same "
          "prompts and noise; held-out distillation loss = velocity MSE to the teacher on "
          + backend_of(params).probe_description(params),
          *(["", comparability(first)] if is_pipeline(evals) else []),
          "", markdown_table(table), "",
          "## The fair protocol: each method at its own learning rate", "",
          f"Every method trains at the peak learning rate that gave it the lowest loss on the "
          f"validation split (train-split images that QAT never trains on; the held-out split "
          f"above is never used to choose), `{params.train.lr_schedule}` learning-rate shape, "
          f"{params.train.warmup_steps} warm-up steps for all; grid, budget and validation "
          f"losses from `reports/tune.json` ({tune.get('steps', '-')} steps, seed "
          f"{tune.get('seed', '-')}):", "", fair.tune_markdown(tune) if tune else "(no tuning)",
          "", fair.comparisons_markdown(fair_rows), "",
          "Ratio = geometric mean over seeds of method / reference (paired by seed), with the "
          "Student-t 95 % interval of the mean log-ratio; Holm p = the log-ratio test's p "
          "adjusted over every test of this table. Outcome: *wins* / *loses* when both metrics "
          f"are ≥ {fair.WIN_PCT:g} % better / worse with Holm p < 0.05, *ties* when both "
          f"intervals lie within ±{fair.WIN_PCT:g} %, *mixed* when one is confirmed better and "
          "the other worse, *unresolved* otherwise. Raw Δ% = difference of the means over the "
          "reference's mean, with its paired t interval.", "",
          "## Fractional bits × warm-up (2 × 2 factorial)", "",
          "`qat` (no/no), `qat-warmup` (no/yes), `fraqat-late` (yes/no), `fraqat-late-warmup` "
          "(yes/yes, `qat-warmup`'s exact learning-rate curve). Main effects average the "
          "per-seed log-ratios over the other factor; the interaction is the ratio of ratios "
          "(1 = the effects multiply).", "", fair.factorial_markdown(evals), "",
          "Why the protocol: the earlier default table gave every method one cosine over the "
          "run at lr 1e-4, which left FraQAT's 4-bit stage at 0.04–4 % of the peak rate; its "
          "'+562 %' held-out loss against QAT measured that schedule, not fractional bits "
          "(with a constant rate it was +20 %, 0.0249 vs 0.0207 over 3 seeds: "
          "`benchmarks/SCHEDULES.md` §1).", "",
          f"## {cand} vs qat", "",
          "Paired over seeds: `scipy.stats.ttest_rel` (when ≥ 2 seeds) and a hierarchical "
          f"paired bootstrap ({BOOTSTRAP_RESAMPLES} resamples of seeds, then of items within "
          "each seed: held-out points or samples, paired by index; with few seeds it "
          "measures item noise more than seed-to-seed variance).", ""]
    md += [tests_markdown(list(results.values()), cand) if results else
           f"No qat/{cand} pair to test.",
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
    details = {**flat_metrics(table, results, reproduced, probes), **fair.flat(fair_rows)}
    write_json(DETAILS, details)
    write_json(paths.METRICS, {k: v for k, v in details.items() if k.startswith(HEADLINE)})
    verdict = "smoke run: no verdict" if params.smoke else "verdict " + \
        {True: "reproduced", False: "not reproduced", None: "n/a"}[reproduced]
    log.info("report: %d methods, %s; missing: %s", len(table), verdict,
             ", ".join(missing) or "none")
