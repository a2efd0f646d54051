"""fraqat.report.factorial: main effects and interaction recover known multiplicative effects."""

from __future__ import annotations

import numpy as np
import pytest

from fraqat.report.factorial import ARMS, effects, missing_arms


def _values(bits: float, warm: float, inter: float, noise: float = 0.01) -> dict:
    rng = np.random.default_rng(0)
    base = {s: 0.02 * float(np.exp(rng.normal(0, 0.1))) for s in range(6)}
    factor = {"qat": 1.0, "qat-warmup": warm, "fraqat-late": bits,
              "fraqat-late-warmup": bits * warm * inter}
    return {m: {s: v * factor[m] * float(np.exp(rng.normal(0, noise))) for s, v in base.items()}
            for m in ARMS.values()}


def test_effects_recover_the_ratios():
    got = effects(_values(bits=1.10, warm=0.80, inter=1.0))
    assert got["fractional bits"]["ratio"] == pytest.approx(1.10, rel=0.02)
    assert got["warm-up"]["ratio"] == pytest.approx(0.80, rel=0.02)
    assert got["interaction"]["ci"][0] < 1.0 < got["interaction"]["ci"][1]
    inter = effects(_values(bits=1.0, warm=0.8, inter=1.25))["interaction"]
    assert inter["ratio"] == pytest.approx(1.25, rel=0.03) and inter["ci"][0] > 1.0


def test_a_missing_arm_gives_no_effect():
    values = _values(1.0, 1.0, 1.0)
    del values["fraqat-late-warmup"]
    assert missing_arms(values) == ["fraqat-late-warmup"]
    assert effects(values) == {"fractional bits": None, "warm-up": None, "interaction": None}
