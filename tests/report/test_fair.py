"""fraqat.report.fair: outcomes follow the ±4 % rule on both metrics; the verdict names the best
fractional schedule and the controls, generated from the numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from fraqat.report.fair import comparisons, flat, outcome, tune_markdown, verdict


@pytest.mark.parametrize(("deltas", "expected"), [
    ([-5.0, -4.0], "wins"), ([-5.0, -3.9], "ties"), ([3.9, -1.0], "ties"),
    ([4.0, 0.0], "loses"), ([6.0, -6.0], "ties"), ([None, -9.0], "-")])
def test_outcome(deltas: list, expected: str) -> None:
    assert outcome(deltas) == expected


def evals(values: dict[str, tuple[float, float]]) -> pd.DataFrame:
    rows = []
    for method, (loss, mse) in values.items():
        for seed, jitter in enumerate((0.99, 1.01)):
            rows.append({"method": method, "seed": seed, "heldout_distill_loss": loss * jitter,
                         "teacher_mse": mse * jitter})
    return pd.DataFrame(rows)


def test_verdict_from_the_table() -> None:
    ev = evals({"ptq": (0.09, 0.02), "qat": (0.010, 0.0030), "fraqat": (0.012, 0.0036),
                "fraqat-late": (0.0101, 0.0029), "qat-warmup": (0.0102, 0.0030),
                "qat-target-steps": (0.0110, 0.0033)})
    methods = ["ptq", "qat", "qat-warmup", "fraqat", "fraqat-late", "qat-target-steps"]
    rows = comparisons(ev, methods, "fraqat-late")
    got = {(r["method"], r["ref"]): r["outcome"] for r in rows}
    assert got[("fraqat", "qat")] == "loses" and got[("fraqat-late", "qat")] == "ties"
    assert got[("qat-target-steps", "fraqat-late")] == "loses"
    text = verdict(rows, ev, {"qat": 3e-4, "fraqat": 3e-3, "fraqat-late": 1e-3},
                   "fraqat-late", "W4A8")
    assert "`fraqat-late` (lr 0.001), ties with tuned standard QAT (lr 0.0003)" in text
    assert "held-out loss +1.0%" in text and "on both sensitive metrics: none" in text
    assert "`fraqat` (lr 0.003): held-out loss +20.0% and teacher MSE +20.0% (loses)" in text
    assert flat(rows)["fair.heldout_loss.fraqat_vs_qat.delta_pct"] == pytest.approx(20.0)


def test_verdict_without_a_pair() -> None:
    ev = evals({"qat": (0.01, 0.003)})
    assert "cannot be tested" in verdict(comparisons(ev, ["qat"], "fraqat-late"), ev, {},
                                         "fraqat-late", "W4A8")


def test_tune_markdown() -> None:
    md = tune_markdown({"grid": [1e-4, 1e-3], "losses": {"qat": {"0.0001": 0.02, "0.001": 0.01}},
                        "chosen": {"qat": 1e-3}})
    assert "| qat | 0.0200 | 0.0100 | 0.001 (edge) |" in md


def test_outcome_not_confirmed_by_the_interval_is_marked() -> None:
    rows = []
    for seed, (q, f) in enumerate([(0.010, 0.0125), (0.010, 0.0095), (0.010, 0.012)]):
        rows += [{"method": "qat", "seed": seed, "heldout_distill_loss": q, "teacher_mse": q},
                 {"method": "fraqat", "seed": seed, "heldout_distill_loss": f,
                  "teacher_mse": f}]
    ev = pd.DataFrame(rows)
    (row,) = comparisons(ev, ["qat", "fraqat"], "fraqat-late")
    assert row["results"]["heldout_distill_loss"]["delta_pct"] > 4  # +13 % on the mean...
    assert row["outcome"] == "loses (n.s.)"  # ...but one seed is better: not confirmed
    text = verdict([row], ev, {}, "fraqat-late", "W4A8")
    assert "loses to (on the means; the 95 % interval over seeds includes no change)" in text
    assert "on both sensitive metrics: none" in text
