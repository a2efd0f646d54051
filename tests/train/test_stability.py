"""fraqat.train.stability: spikes against the running median; divergence detected."""

from __future__ import annotations

import math

import pytest

from fraqat.train.stability import max_spike, stability


def test_flat_and_decaying_curves_have_no_spike() -> None:
    assert max_spike([1.0] * 50) == (1.0, 0)
    decay = [1.0 / (k + 1) for k in range(100)]
    assert max_spike(decay)[0] == 1.0
    s = stability(decay)
    assert not s["diverged"] and s["final_loss"] == pytest.approx(sum(decay[-5:]) / 5)


def test_a_spike_is_its_ratio_to_the_running_median() -> None:
    losses = [1.0] * 30 + [7.0] + [1.0] * 30
    assert max_spike(losses, window=20) == (7.0, 30)
    assert not stability(losses)["diverged"]


def test_divergence() -> None:
    assert stability([1.0, 2.0, 4.0, 8.0])["diverged"]
    nan = stability([1.0, 0.5, math.nan])
    assert nan["diverged"] and nan["max_spike"] == math.inf


def test_empty_curve_is_one_line_error() -> None:
    with pytest.raises(ValueError, match="losses="):
        stability([])


def test_a_planned_bit_drop_is_not_a_spike_nor_a_divergence() -> None:
    bits = [8.0] * 30 + [4.0] * 30
    losses = [0.01] * 30 + [0.5] + [0.5 * 0.95 ** k for k in range(1, 30)]
    assert max_spike(losses, bits) == (1.0, 0)
    assert max_spike(losses)[0] == 50.0  # without the stages it would be one
    assert not stability(losses, bits)["diverged"] and stability(losses)["diverged"]
