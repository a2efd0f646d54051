"""Paired statistics for method comparisons: the seed-level t-test and a hierarchical bootstrap.

Seeds are the unit of replication (each seed re-draws the student's batches, and with it the
trained weights), so the headline interval is scipy's paired t-test over seeds. The
bootstrap adds the per-item noise (held-out points, samples) that a few seeds cannot show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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


# ----------------------------------------------------------------------------- log ratios
#
# Quantization errors are multiplicative: a method that is 10 % worse is 10 % worse whether
# the seed drew a good or a bad batch order. The primary effect is therefore the paired
# log-ratio: per seed r = method / reference, a Student-t interval of mean(log r) over seeds,
# exponentiated back to a ratio (the geometric mean of the per-seed ratios).

ALPHA = 0.05
THRESHOLD_PCT = 4.0  # the low end of the paper's 4-7 % claim: the smallest effect that counts


def log_interval(logs: np.ndarray, level: float = 1 - ALPHA) -> dict | None:
    """Student-t interval of mean(logs), as a ratio and as % change, with the two-sided p of
    mean = 0. None when undefined: fewer than two values, a non-finite one, or zero spread."""
    x = np.asarray(logs, float)
    if len(x) < 2 or not np.all(np.isfinite(x)):
        return None
    sd = float(x.std(ddof=1))
    if sd == 0.0:
        return None
    n, m = len(x), float(x.mean())
    se = sd / math.sqrt(n)
    q = float(stats.t.ppf(0.5 + level / 2, n - 1))
    p = float(2 * stats.t.sf(abs(m) / se, n - 1))
    lo, hi = math.exp(m - q * se), math.exp(m + q * se)
    return {"ratio": math.exp(m), "ci": [lo, hi], "pct": 100 * (math.exp(m) - 1),
            "ci_pct": [100 * (lo - 1), 100 * (hi - 1)], "p": p, "n": n, "sd_log": sd}


def log_ratio(a: np.ndarray, b: np.ndarray, level: float = 1 - ALPHA) -> dict | None:
    """Paired log-ratio of ``a`` over ``b`` (same seeds, same order): :func:`log_interval` of
    log(a / b). None when a value is not positive or the interval is undefined."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) != len(b) or np.any(a <= 0) or np.any(b <= 0):
        return None
    return log_interval(np.log(a / b), level)


def interval_from_raw(delta: float, ci_pct: list[float], n: int) -> dict | None:
    """The paired raw-difference test rebuilt from its mean Δ% and 95 % interval (a summary
    that kept no per-seed values): same ratio-of-means scale, its t-test's exact p, and the
    per-seed spread of the difference relative to the method's mean as ``sd_log``."""
    lo, hi = ci_pct
    q = float(stats.t.ppf(1 - ALPHA / 2, n - 1))
    se = (hi - lo) / (2 * q)
    if n < 2 or se <= 0:
        return None
    p = float(2 * stats.t.sf(abs(delta) / se, n - 1))
    # the per-seed spread of the relative difference stands in for that of log(ratio)
    # (equal to first order for small effects), so the seeds-needed estimate still works
    sd = se * math.sqrt(n) / (100 + delta)
    return {"ratio": 1 + delta / 100, "ci": [1 + lo / 100, 1 + hi / 100], "pct": delta,
            "ci_pct": [lo, hi], "p": p, "n": n, "sd_log": sd, "raw": True}


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error); None stays None."""
    known = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    running, k = 0.0, len(known)
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (k - rank) * p))
        out[i] = running
    return out


def side(effect: Mapping | None, threshold_pct: float = THRESHOLD_PCT,
         alpha: float = ALPHA) -> str:
    """One metric's reading, the same rule for both directions:

    * ``better`` / ``worse``: the ratio is at least ``threshold_pct`` away from 1 and its test
      rejects no change (``p_adj`` when Holm-adjusted, else ``p``) at ``alpha``;
    * ``within``: the whole interval lies inside ±``threshold_pct`` (no effect of that size);
    * ``unresolved``: anything else (an effect the seeds cannot confirm or exclude).
    """
    if not effect:
        return "unresolved"
    p = effect.get("p_adj", effect.get("p"))
    lo, hi = effect["ci_pct"]
    if p is not None and p < alpha:
        if effect["pct"] <= -threshold_pct and hi < 0:
            return "better"
        if effect["pct"] >= threshold_pct and lo > 0:
            return "worse"
    if -threshold_pct < lo and hi < threshold_pct:
        return "within"
    return "unresolved"


def classify(effects: Sequence[Mapping | None], threshold_pct: float = THRESHOLD_PCT,
             alpha: float = ALPHA) -> str:
    """A comparison on several metrics: ``wins`` when every metric is ``better``, ``loses``
    when every metric is ``worse`` (the same metrics and threshold confirm either), ``ties``
    when every metric is ``within``, ``mixed`` when one is better and another worse, else
    ``unresolved``; ``-`` when no metric has an interval."""
    if not any(effects):
        return "-"
    sides = [side(e, threshold_pct, alpha) for e in effects]
    for label, word in (("better", "wins"), ("worse", "loses"), ("within", "ties")):
        if all(s == label for s in sides):
            return word
    if "better" in sides and "worse" in sides:
        return "mixed"
    return "unresolved"


def seeds_needed(sd_log: float | None, effect_pct: float = THRESHOLD_PCT,
                 power: float = 0.8, alpha: float = ALPHA, cap: int = 1000) -> int | None:
    """Seeds a paired t-test on the log-ratios needs to detect a ``effect_pct`` change with
    ``power`` at two-sided ``alpha``, given the per-seed spread ``sd_log`` of log(ratio)
    (the noncentral-t power of the one-sample test); None without a spread, ``cap`` + 1
    when even ``cap`` seeds are not enough."""
    if not sd_log or not math.isfinite(sd_log):
        return None
    delta = abs(math.log1p(effect_pct / 100)) / sd_log

    def power_at(n: int) -> float:
        q, nc = stats.t.ppf(1 - alpha / 2, n - 1), delta * math.sqrt(n)
        return float(stats.nct.sf(q, n - 1, nc) + stats.nct.cdf(-q, n - 1, nc))

    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    n = min(cap + 1, max(2, int((z / delta) ** 2)))  # the normal approximation, then exact
    while n > 2 and power_at(n - 1) >= power:
        n -= 1
    while n <= cap and power_at(n) < power:
        n += 1
    return n
