"""The comparison table: one row per method, aggregated over its seeds (pure, no file I/O)."""

from __future__ import annotations

import pandas as pd

from fraqat.report.tables import fmt, isnan
from fraqat.report.tables import markdown_table as md_table

NOISE = "noise"
BASELINE = "qat"
CSV_COLUMNS = ["method", "bits", "n_seeds", "fid_mean", "fid_std", "fid_delta_pct_vs_qat",
               "prompt_accuracy", "teacher_psnr_db", "teacher_mse_mean", "teacher_mse_std",
               "heldout_loss_mean", "heldout_loss_std", "model_size_mb", "train_wall_s"]


def bits_label(weight_bits: float | None, act_bits: float | None, method: str) -> str:
    if method == NOISE:
        return "-"
    if weight_bits is None or isnan(weight_bits):
        return "FP32"
    act = "" if act_bits is None or isnan(act_bits) else f"A{act_bits:g}"
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
            "teacher_ssim": _mean(ev["teacher_ssim"]) if "teacher_ssim" in ev else float("nan"),
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
    if is_pipeline(evals) and table["teacher_ssim"].notna().any():
        columns.insert(columns.index("teacher_psnr_db") + 1, "teacher_ssim")
    return table[columns]


def is_pipeline(evals: pd.DataFrame) -> bool:
    """Evaluations of a real diffusers pipeline (they name their FID reference)."""
    return "fid_reference" in evals and bool(evals["fid_reference"].notna().any())


def comparability(first: pd.Series) -> str:
    """Which of a real pipeline's numbers compare with the paper's, from one evaluation row.

    The paper reports FiD (Inception features) and its relative gap to standard QAT; its
    reference set and image count are not in the project's notes, so an absolute FID
    compares only when those match, while ratios between methods compare at any count.
    """
    n, space, ref = int(first["num_images"]), first["feature_space"], first["fid_reference"]
    if space != "inception":
        fid = (f"FID in {space} features is **not comparable** to the paper's FiD (Inception "
               "features): rank methods by it only")
    elif ref != "real images":
        fid = ("FID against the FP pipeline's own images measures the distance to the FP "
               "model, **not comparable** to the paper's FiD against real images; its ratios "
               "between methods are")
    else:
        fid = (f"FID is Inception features against real images at {n:,} images per model: "
               "the paper's kind of FiD; an absolute value compares only at the paper's "
               "reference set and image count (FID falls as images grow), the Δ% vs qat "
               "compares with the paper's 4–7 % at any count")
    return (f"Comparable to the paper: {fid}. CLIP score and PSNR / SSIM to the FP images "
            "(same prompts and seeds) are the field's usual companions; the paper's stored "
            "text reports FiD only.")


def markdown_table(table: pd.DataFrame) -> str:
    clip = "clip_score" in table.columns
    ssim = "teacher_ssim" in table.columns
    head = ["method", "W/A bits", "FID (mean ± std)", "Δ% FID vs qat", "prompt acc.",
            *(["CLIP score"] if clip else []),
            "teacher PSNR dB / MSE", *(["SSIM to FP"] if ssim else []),
            "held-out distill loss", "size MB", "train wall s", "seeds"]
    rows = []
    for r in table.itertuples(index=False):
        delta = "-" if isnan(r.fid_delta_pct_vs_qat) else f"{r.fid_delta_pct_vs_qat:+.1f}%"
        fidelity = f"{fmt(r.teacher_psnr_db, 1)} / {fmt(r.teacher_mse_mean, 3)}"
        rows.append([r.method, r.bits, fmt(r.fid_mean, 2, r.fid_std), delta,
                     fmt(r.prompt_accuracy, 3), *([fmt(r.clip_score, 2)] if clip else []),
                     fidelity, *([fmt(r.teacher_ssim, 3)] if ssim else []),
                     fmt(r.heldout_loss_mean, 3, r.heldout_loss_std), fmt(r.model_size_mb, 3),
                     fmt(r.train_wall_s, 1), str(r.n_seeds)])
    return md_table(head, rows)
