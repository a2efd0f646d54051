"""Paired statistics: scipy's t-test over seeds and the hierarchical bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sp

from fraqat.report.stats import (
    classify,
    delta_pct,
    holm,
    interval_from_raw,
    log_ratio,
    paired_bootstrap,
    paired_ttest,
    seeds_needed,
    side,
)


def test_paired_bootstrap_constant_difference():
    a = np.full((2, 50), 1.5)
    b = np.ones((2, 50))
    res = paired_bootstrap(a, b, resamples=200)
    assert res["diff"] == pytest.approx(0.5)
    assert res["ci_low"] == pytest.approx(0.5) and res["ci_high"] == pytest.approx(0.5)
    assert res["p"] == 0.0
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((3, 400))
    assert paired_bootstrap(noise, noise.copy())["p"] == 1.0


def test_paired_ttest_interval_is_the_student_t_interval_in_percent():
    fra, qat = np.array([1.0, 1.2, 0.9, 1.1]), np.array([1.1, 1.25, 1.0, 1.3])
    d = fra - qat
    lo, hi = sp.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sp.sem(d))
    res = paired_ttest(fra, qat)
    assert res["ci_pct"] == pytest.approx([100 * lo / qat.mean(), 100 * hi / qat.mean()])
    assert res["p"] == pytest.approx(sp.ttest_rel(fra, qat).pvalue) and res["n"] == 4


def test_paired_ttest_is_undefined_without_spread_or_pairs():
    assert paired_ttest([1.0], [2.0]) is None
    assert paired_ttest([1.0, 2.0], [0.5, 1.5]) is None  # constant difference


def test_delta_pct():
    assert delta_pct(1.1, 1.0) == pytest.approx(10.0)
    assert delta_pct(1.0, 0.0) is None and delta_pct(float("nan"), 1.0) is None


def test_log_ratio_is_the_t_interval_of_the_per_seed_logs():
    a, b = np.array([1.10, 1.21, 0.98, 1.05]), np.array([1.0, 1.1, 1.0, 1.0])
    logs = np.log(a / b)
    lo, hi = sp.t.interval(0.95, 3, loc=logs.mean(), scale=sp.sem(logs))
    res = log_ratio(a, b)
    assert res["ratio"] == pytest.approx(np.exp(logs.mean()))
    assert res["ci"] == pytest.approx([np.exp(lo), np.exp(hi)])
    assert res["ci_pct"] == pytest.approx([100 * (np.exp(lo) - 1), 100 * (np.exp(hi) - 1)])
    assert res["p"] == pytest.approx(sp.ttest_1samp(logs, 0).pvalue) and res["n"] == 4
    assert log_ratio([1.0, 2.0], [0.5, 1.0]) is None  # the same ratio every seed: no spread
    assert log_ratio([1.0, -1.0], [1.0, 1.0]) is None and log_ratio([1.0], [2.0]) is None


def test_log_ratio_is_symmetric_in_its_arguments():
    a, b = np.array([0.43, 0.39, 0.48]) * 2, np.array([2.0, 2.0, 2.0])
    ab, ba = log_ratio(a, b), log_ratio(b, a)
    assert ab["ratio"] * ba["ratio"] == pytest.approx(1.0)
    assert ab["ci"][0] * ba["ci"][1] == pytest.approx(1.0) and ab["p"] == pytest.approx(ba["p"])
    assert ab["ratio"] == pytest.approx(0.43, abs=0.01)  # the GPU W3+outliers per-seed ratios


def test_interval_from_raw_recovers_the_paired_t_test():
    fra, qat = np.array([1.0, 1.2, 0.9, 1.1, 1.05]), np.array([1.1, 1.25, 1.0, 1.3, 1.1])
    raw = paired_ttest(fra, qat)
    got = interval_from_raw(delta_pct(fra.mean(), qat.mean()), raw["ci_pct"], 5)
    assert got["p"] == pytest.approx(raw["p"]) and got["raw"]
    assert got["sd_log"] == pytest.approx(np.std(fra - qat, ddof=1) / fra.mean())


def test_holm_matches_the_step_down_definition():
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None],
                                                            nan_ok=True)
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def _effect(pct: float, lo: float, hi: float, p: float) -> dict:
    return {"pct": pct, "ci_pct": [lo, hi], "p": p, "ratio": 1 + pct / 100, "n": 5}


@pytest.mark.parametrize(("effects", "expected"), [
    ([_effect(-6, -9, -3, 0.01), _effect(-5, -8, -2, 0.02)], "wins"),
    ([_effect(6, 3, 9, 0.01), _effect(5, 2, 8, 0.02)], "loses"),
    ([_effect(6, 3, 9, 0.01), _effect(1, -1, 3, 0.3)], "unresolved"),  # one metric only
    ([_effect(-1, -3, 2, 0.4), _effect(1, -2, 3, 0.5)], "ties"),
    ([_effect(-6, -9, -3, 0.01), _effect(6, 3, 9, 0.01)], "mixed"),
    ([_effect(-6, -30, 20, 0.5), _effect(-6, -9, -3, 0.01)], "unresolved"),
    ([None, None], "-")])
def test_classify_is_one_rule_for_both_directions(effects: list, expected: str):
    assert classify(effects) == expected
    flipped = [e and _effect(-e["pct"], -e["ci_pct"][1], -e["ci_pct"][0], e["p"])
               for e in effects]
    mirror = {"wins": "loses", "loses": "wins"}
    assert classify(flipped) == mirror.get(expected, expected)


def test_holm_adjusted_p_decides():
    e = _effect(-6, -9, -3, 0.01)
    assert side(e) == "better" and side({**e, "p_adj": 0.2}) == "unresolved"


def test_seeds_needed_by_paired_t_power():
    sd = 0.03  # per-seed spread of log(ratio)
    n = seeds_needed(sd)
    delta = np.log(1.04) / sd

    def power(k: int) -> float:
        q = sp.t.ppf(0.975, k - 1)
        return sp.nct.sf(q, k - 1, delta * np.sqrt(k)) + sp.nct.cdf(-q, k - 1, delta * np.sqrt(k))
    assert power(n) >= 0.8 > power(n - 1)
    assert seeds_needed(0.005) < n < seeds_needed(0.06)
    assert seeds_needed(None) is None
