"""fraqat.report.fair: log-ratio effects with Holm over the table, one symmetric rule, the
factorial, and verdict sentences generated from the intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraqat.report.fair import (
    comparisons,
    comparisons_markdown,
    factorial_markdown,
    flat,
    tune_markdown,
    verdict,
)

SCOPE = "the tiny-sana teacher on 8×8 digits, W4A8"


def evals(values: dict[str, tuple[float, float]], seeds: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    jitter = np.exp(rng.normal(0, 0.01, seeds))  # shared by every method: paired seeds
    rows = []
    for method, (loss, mse) in values.items():
        own = np.exp(rng.normal(0, 0.005, seeds))
        for seed in range(seeds):
            rows.append({"method": method, "seed": seed,
                         "heldout_distill_loss": loss * jitter[seed] * own[seed],
                         "teacher_mse": mse * jitter[seed] * own[seed]})
    return pd.DataFrame(rows)


METHODS = ["ptq", "qat", "qat-warmup", "fraqat-late", "fraqat-late-warmup"]
VALUES = {"ptq": (0.09, 0.02), "qat": (0.010, 0.0030), "qat-warmup": (0.0090, 0.0027),
          "fraqat-late": (0.0110, 0.0033), "fraqat-late-warmup": (0.0101, 0.0030)}


def test_outcomes_follow_the_symmetric_rule_with_holm() -> None:
    rows = comparisons(evals(VALUES), METHODS, "fraqat-late")
    got = {(r["method"], r["ref"]): r["outcome"] for r in rows}
    assert got[("qat-warmup", "qat")] == "wins" and got[("fraqat-late", "qat")] == "loses"
    assert got[("fraqat-late-warmup", "qat")] == "ties"
    assert got[("qat-warmup", "fraqat-late")] == "wins"
    assert got[("fraqat-late-warmup", "qat-warmup")] == "loses"
    ps = [x["effect"]["p_adj"] for r in rows for x in r["results"].values()]
    raw = [x["effect"]["p"] for r in rows for x in r["results"].values()]
    assert all(a >= b for a, b in zip(ps, raw, strict=True)) and max(ps) <= 1.0
    md = comparisons_markdown(rows)
    assert "| fraqat-late | qat | ×1.1" in md and "| loses |" in md


def test_factorial_and_verdict_sentences() -> None:
    ev = evals(VALUES)
    rows = comparisons(ev, METHODS, "fraqat-late")
    text = verdict(rows, ev, {"qat": 3e-4, "fraqat-late": 1e-3}, "fraqat-late", SCOPE)
    assert f"On {SCOPE}, `fraqat-late` loses to `qat`: held-out loss ×1.1" in text
    assert f"On {SCOPE}, `qat-warmup` beats `qat`" in text
    assert f"Factorial on {SCOPE} (held-out loss" in text and "fractional bits ×1.1" in text
    assert "interaction ×" in text and ": higher: estimate ≥ 4 %, interval excludes 0" in text
    assert "(paired t test on the log-ratios, 80 % power, α 0.05)" in text
    assert "`fraqat-late` 0.001" in text and "Verdict:" not in text
    md = factorial_markdown(ev)
    assert "| interaction |" in md and "| warm-up | ×0.9" in md
    keys = flat(rows)
    assert keys["fair.heldout_loss.fraqat-late_vs_qat.ratio_pct"] == pytest.approx(10.0, abs=3)
    assert "fair.teacher_mse.qat-warmup_vs_qat.p_holm" in keys


def test_missing_arm_and_too_few_seeds() -> None:
    ev = evals({k: v for k, v in VALUES.items() if k != "fraqat-late-warmup"}, seeds=2)
    assert factorial_markdown(ev).startswith("Not run: `fraqat-late-warmup`")
    rows = comparisons(ev, METHODS[:-1], "fraqat-late")
    assert {r["outcome"] for r in rows} <= {"unresolved", "wins", "loses", "ties"}
    text = verdict(rows, ev, {}, "fraqat-late", SCOPE)
    assert "2 seeds" in text


def test_verdict_without_a_pair() -> None:
    ev = evals({"qat": (0.01, 0.003)})
    assert "cannot be tested" in verdict(comparisons(ev, ["qat"], "fraqat-late"), ev, {},
                                         "fraqat-late", SCOPE)


def test_tune_markdown() -> None:
    md = tune_markdown({"grid": [1e-4, 1e-3], "losses": {"qat": {"0.0001": 0.02, "0.001": 0.01}},
                        "chosen": {"qat": 1e-3}})
    assert "| qat | 0.0200 | 0.0100 | 0.001 (edge) |" in md


def test_a_mean_difference_the_seeds_do_not_confirm_is_unresolved() -> None:
    rows = []
    for seed, (q, f) in enumerate([(0.010, 0.0125), (0.010, 0.0095), (0.010, 0.012)]):
        rows += [{"method": "qat", "seed": seed, "heldout_distill_loss": q, "teacher_mse": q},
                 {"method": "fraqat", "seed": seed, "heldout_distill_loss": f,
                  "teacher_mse": f}]
    ev = pd.DataFrame(rows)
    (row,) = comparisons(ev, ["qat", "fraqat"], "fraqat-late")
    assert row["results"]["heldout_distill_loss"]["delta_pct"] > 4  # +13 % on the mean...
    assert row["outcome"] == "unresolved"  # ...but one seed is better: not confirmed
    text = verdict([row], ev, {}, "fraqat-late", SCOPE)
    assert "`fraqat` is not resolved against `qat`" in text and "seeds would resolve" in text
