"""fraqat.report.words: no sentence claims a win, loss or tie its intervals do not support."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from fraqat.report.stats import THRESHOLD_PCT
from fraqat.report.words import claim_sentence, comparison_sentence, scope_text

SCOPE = "a 0.19 M-parameter teacher on 8×8 digits, W4A8"


@st.composite
def effects(draw) -> dict | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    lo = draw(st.floats(-60, 60))
    hi = draw(st.floats(lo, 80))
    pct = draw(st.floats(lo, hi))
    p = draw(st.floats(0, 1))
    e = {"pct": pct, "ci_pct": [lo, hi], "ratio": 1 + pct / 100, "n": draw(st.integers(2, 9)),
         "p": p, "sd_log": draw(st.one_of(st.none(), st.floats(0.001, 0.5)))}
    if draw(st.booleans()):
        e["p_adj"] = min(1.0, p * draw(st.floats(1, 6)))
    return e


def _confirmed(e: dict | None, sign: int) -> bool:
    """Independent of the module: the effect is ≥ 4 % in direction ``sign`` and its test
    (adjusted when adjusted) rejects no change, the interval on that side of 0."""
    if not e:
        return False
    p = e.get("p_adj", e["p"])
    lo, hi = e["ci_pct"]
    return p < 0.05 and sign * e["pct"] >= THRESHOLD_PCT and (hi < 0 if sign < 0 else lo > 0)


@settings(deadline=None)
@given(st.lists(effects(), min_size=1, max_size=3))
def test_no_sentence_is_stronger_than_its_intervals(es: list) -> None:
    named = {f"metric {i}": e for i, e in enumerate(es)}
    text = comparison_sentence("fraqat-late", "qat", named, SCOPE)
    assert text.startswith(f"On {SCOPE}, `fraqat-late` ")
    if " beats `qat`" in text:
        assert all(_confirmed(e, -1) for e in es)
    if " loses to `qat`" in text:
        assert all(_confirmed(e, +1) for e in es)
    if " is within ±4 % of `qat`" in text:
        assert all(e and -4 < e["ci_pct"][0] and e["ci_pct"][1] < 4 for e in es)
    if all(_confirmed(e, -1) for e in es):
        assert " beats `qat`" in text
    if all(_confirmed(e, +1) for e in es):
        assert " loses to `qat`" in text


@settings(deadline=None)
@given(effects())
def test_the_claim_sentence_follows_the_interval(e: dict | None) -> None:
    reproduced, text = claim_sentence(e, SCOPE, (4.0, 7.0), "DiTs of 0.6–12 B parameters")
    assert "on DiTs of 0.6–12 B parameters" in text and f"On {SCOPE}" in text
    if reproduced is True:
        assert _confirmed(e, -1)
    if reproduced is False:
        assert e and e["ci_pct"][0] > -4.0  # the claimed size is outside the interval
    if e and e["ci_pct"][0] > -4.0:
        assert reproduced is False


def test_unresolved_sentences_say_how_many_seeds_would_do() -> None:
    e = {"pct": -3.0, "ci_pct": [-20.0, 16.0], "ratio": 0.97, "n": 2, "p": 0.4,
         "sd_log": 0.02}
    text = comparison_sentence("fraqat-late", "qat", {"held-out loss": e}, SCOPE)
    assert "is not resolved against `qat`" in text and "seeds would resolve ±4 %" in text
    assert "×0.970 (-3.0 % [-20.0, +16.0])" in text and "2 seeds" in text
    assert not math.isnan(e["pct"])


def test_scope_text() -> None:
    assert scope_text({"a": 0.19, "b": 10.7}, "8×8 / 28×28 digits", "W4A8") == \
        "teachers of 0.19–10.7 M parameters on 8×8 / 28×28 digits, W4A8"
    assert scope_text({"a": 0.19}, "8×8 digits", "W3A8").startswith("a 0.19 M-parameter")


@settings(deadline=None)
@given(effects())
def test_a_single_effect_reads_no_stronger_than_its_interval(e: dict | None) -> None:
    from fraqat.report.words import read_effect

    text = read_effect("fractional bits", e)
    if "lower: estimate ≥ 4 %, interval excludes 0" in text:
        assert _confirmed(e, -1)
    if "higher: estimate ≥ 4 %, interval excludes 0" in text:
        assert _confirmed(e, +1)
    if "within ±4 %" in text:
        assert e and -4 < e["ci_pct"][0] and e["ci_pct"][1] < 4
