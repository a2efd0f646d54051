"""pipelines.regime: experiments' per-run metrics become one row per (cell, method)."""

from __future__ import annotations

import pytest

from pipelines.regime import render, runs, summarize


def metrics(method: str, seed: int, loss: float, spike: float, diverged: bool) -> dict:
    return {f"reports/train/{method}-s{seed}.json": {"data": {
                "final_target_loss": loss, "max_spike": spike, "diverged": diverged,
                "final_loss": loss, "lr": 0.003}},
            f"reports/eval/{method}-s{seed}.json": {"data": {
                "heldout_distill_loss": loss, "teacher_mse": loss / 4}}}


def show() -> list[dict]:
    m = {"reports/metrics.json": {"data": {"x": 1}},
         "reports/teacher.json": {"data": {"max_absmax_over_std": 15.3, "max_kurtosis": 134.0}}}
    for seed, (q, f) in enumerate([(0.020, 0.018), (0.022, 0.019), (0.021, 0.0185)]):
        m |= metrics("qat", seed, q, 9.0, seed == 0) | metrics("fraqat-late", seed, f, 2.0, False)
    unfinished = {"name": "w3-lr3e-3", "executor": {"state": "queued"},
                  "revs": [{"data": {"metrics": m}}]}
    return [{"experiments": [{"name": "w4-outliers-lr3e-3", "revs": [{"data": {"metrics": m}}]},
                             unfinished]}]


def test_collect_summarizes_cells() -> None:
    df = runs(show())
    assert len(df) == 6 and set(df["cell"]) == {"w4-outliers-lr3e-3"}
    table = summarize(df).set_index("method")
    assert table.loc["qat", "divergence_rate"] == pytest.approx(1 / 3)
    assert table.loc["qat", "max_spike"] == 9.0
    assert table.loc["fraqat-late", "d_heldout"] == pytest.approx(100 * (0.0555 / 0.063 - 1))
    assert table.loc["fraqat-late", "d_mse"] is None  # train-only cells: no teacher MSE
    assert table.loc["fraqat-late", "outcome"] == "wins"
    assert table.loc["qat", "teacher_absmax_over_std"] == 15.3
    md = render(summarize(df))
    assert "`fraqat-late` in `w4-outliers-lr3e-3`" in md and "| 15.3, 134.0 |" in md
