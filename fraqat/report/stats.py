"""Paired statistics for method comparisons: the seed-level t-test and a hierarchical bootstrap.

Seeds are the unit of replication (each seed re-draws the student's batches, and with it the
trained weights), so the headline interval is scipy's paired t-test over seeds. The
bootstrap adds the per-item noise (held-out points, samples) that a few seeds cannot show.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 2000


def paired_ttest(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict | None:
    """``scipy.stats.ttest_rel(a, b)`` with its interval of mean(a − b) in % of mean(b).

    None when it is undefined: fewer than two pairs, or a constant difference (zero spread).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    if len(d) < 2 or np.allclose(d, d[0]):
        return None
    res = stats.ttest_rel(a, b)
    ci = res.confidence_interval(confidence_level=level)
    ref = b.mean()
    return {"t": float(res.statistic), "p": float(res.pvalue), "n": len(d),
            "ci_pct": [float(100 * ci.low / ref), float(100 * ci.high / ref)]}


def delta_pct(a: float, b: float) -> float | None:
    """(a − b) / b in %, None when b is 0 or either is not finite."""
    if not b or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return 100.0 * (a - b) / b


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> dict:
    """Hierarchical paired bootstrap of mean(a) − mean(b); a, b: (seeds, items), paired.

    Resamples seeds with replacement, then items within each seed (the same indices for
    both methods, since they share prompts, noise and held-out points). Returns the observed
    difference, a 95 % percentile interval and a two-sided bootstrap p-value.
    """
    rng = np.random.default_rng(seed)
    diff = a - b
    k, n = diff.shape
    seed_idx = rng.integers(0, k, size=(resamples, k))
    item_idx = rng.integers(0, n, size=(resamples, k, n))
    boots = diff[seed_idx[:, :, None], item_idx].mean(axis=(1, 2))
    p = 2 * min((boots <= 0).mean(), (boots >= 0).mean())
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"diff": float(diff.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "p": float(min(1.0, p)), "resamples": resamples, "seeds": k, "items": n}
