"""Verdict sentences generated from intervals: scoped to the scale measured and never stronger
than the interval allows.

One rule for both directions (:func:`fraqat.report.stats.classify`): a sentence says a method
*beats* or *loses to* its reference only when every metric's effect is at least the threshold
and its (Holm-adjusted) test rejects no change; *within ±T %* only when every interval lies
inside ±T %; otherwise it says the seeds do not resolve an effect of that size, and how many
seeds would (:func:`fraqat.report.stats.seeds_needed`).
"""

from __future__ import annotations

from collections.abc import Mapping

from fraqat.report.stats import THRESHOLD_PCT, classify, seeds_needed, side

READING = {"better": "lower: estimate ≥ 4 %, interval excludes 0",
           "worse": "higher: estimate ≥ 4 %, interval excludes 0",
           "within": "within ±4 %", "unresolved": "not resolved"}  # one effect, by side()
VERB = {"wins": "beats", "loses": "loses to", "ties": "is within ±{t:g} % of",
        "mixed": "is better than and worse than (on different metrics)",
        "unresolved": "is not resolved against", "-": "cannot be compared with"}


def fmt_effect(effect: Mapping | None) -> str:
    """``×0.917 (−8.3 % [−12.0, −4.4])``: the ratio, then % change and its interval; a raw
    (ratio-of-means) interval is marked †."""
    if not effect:
        return "no interval (fewer than 2 seeds or no spread)"
    lo, hi = effect["ci_pct"]
    mark = "†" if effect.get("raw") else ""
    return f"×{effect['ratio']:.3f} ({effect['pct']:+.1f} % [{lo:+.1f}, {hi:+.1f}]{mark})"


def read_effect(name: str, effect: Mapping | None, threshold: float = THRESHOLD_PCT) -> str:
    """``fractional bits ×1.050 (+5.0 % [+1.2, +9.0]): higher: estimate ≥ 4 %, interval
    excludes 0``."""
    return f"{name} {fmt_effect(effect)}: {READING[side(effect, threshold)]}"


def _p(effect: Mapping | None) -> str:
    if not effect or effect.get("p") is None:
        return "-"
    p = effect.get("p_adj", effect["p"])
    return f"{p:.2g}"


def _needed(effects: Mapping[str, Mapping | None], threshold: float) -> str:
    spreads = [e["sd_log"] for e in effects.values() if e and e.get("sd_log")]
    n = max((seeds_needed(s, threshold) or 0 for s in spreads), default=0)
    count = f"more than {n - 1}" if n > 1000 else f"about {n}"
    return f"; {count} seeds would resolve ±{threshold:g} % at this spread" if n else ""


def comparison_sentence(method: str, ref: str, effects: Mapping[str, Mapping | None],
                        scope: str, threshold: float = THRESHOLD_PCT) -> str:
    """One sentence: ``On <scope>, `method` <verb> `ref`: <metric> <effect>, …``.

    ``effects`` maps a metric's label to its effect (:func:`fraqat.report.stats.log_ratio`
    dict, optionally with ``p_adj``). The verb follows :func:`classify`; the sentence lists
    every metric's ratio and interval and, when not resolved, the seeds a ±``threshold`` %
    effect needs."""
    label = classify(tuple(effects.values()), threshold)
    verb = VERB[label].format(t=threshold)
    n = max((e["n"] for e in effects.values() if e), default=0)
    parts = [f"{name} {fmt_effect(e)}" for name, e in effects.items()]
    ps = ", ".join(_p(e) for e in effects.values())
    adj = "Holm-adjusted " if any(e and "p_adj" in e for e in effects.values()) else ""
    tail = _needed(effects, threshold) if label == "unresolved" else ""
    return (f"On {scope}, `{method}` {verb} `{ref}`: {'; '.join(parts)} ({adj}p {ps}; "
            f"{n} seeds{tail}).")


def claim_sentence(effect: Mapping | None, scope: str, claim: tuple[float, float],
                   paper_scope: str, candidate: str = "fraqat") -> tuple[bool | None, str]:
    """The paper's claim (FID lower by ``claim`` %) against the measured FID ratio of FraQAT
    over QAT: True when a reduction of at least claim[0] % is confirmed (:func:`side`),
    False when the whole interval lies above −claim[0] % (a reduction of the claimed size is
    excluded at this scale), None when the interval allows both."""
    lo_claim, hi_claim = claim
    head = (f"The paper reports an FID {lo_claim:g}–{hi_claim:g} % lower than standard QAT "
            f"on {paper_scope}.")
    if not effect:
        return None, (f"{head} On {scope} the FID ratio of `{candidate}` to `qat` has no "
                      "interval (fewer than 2 seeds or no spread): the claim is neither "
                      "confirmed nor excluded.")
    measured = f"`{candidate}`'s FID is {fmt_effect(effect)} of `qat`'s"
    if side(effect, lo_claim) == "better":
        return True, (f"{head} On {scope}, {measured}: a reduction of at least "
                      f"{lo_claim:g} % on the mean, the interval excluding no change.")
    if effect["ci_pct"][0] > -lo_claim:
        return False, (f"{head} On {scope}, {measured}: the interval excludes a "
                       f"{lo_claim:g} % reduction at this scale (not at the paper's).")
    return None, (f"{head} On {scope}, {measured}: the interval neither confirms nor "
                  f"excludes a {lo_claim:g} % reduction with {effect['n']} seeds.")


def scope_text(params_m: Mapping[str, float], images: str, setting: str) -> str:
    """``teachers of 0.2–10.7 M parameters on 8×8 / 28×28 digits, W4A8`` from the teachers'
    parameter counts (M) and the image description."""
    values = sorted(params_m.values())
    size = (f"a {values[0]:.2g} M-parameter teacher" if len(set(values)) == 1 else
            f"teachers of {values[0]:.2g}–{values[-1]:.3g} M parameters")
    return f"{size} on {images}, {setting}"
