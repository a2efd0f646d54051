"""Paired statistics: scipy's t-test over seeds and the hierarchical bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sp

from fraqat.report.stats import delta_pct, paired_bootstrap, paired_ttest


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
