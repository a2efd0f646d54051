"""The 2 × 2 factorial {fractional bits: no/yes} × {warm-up: no/yes}, on the log scale, paired
by seed.

``qat-warmup`` against ``fraqat-late`` changes two things at once (fractional bits, and the
learning-rate ramp the high-bit stages imply); the fourth arm ``fraqat-late-warmup`` (the
fractional schedule with ``qat-warmup``'s exact learning-rate curve) separates them. With
L = log(loss) per seed:

* fractional-bits effect = ½[(L_late − L_qat) + (L_late-warmup − L_qat-warmup)]
* warm-up effect         = ½[(L_qat-warmup − L_qat) + (L_late-warmup − L_late)]
* interaction            = (L_late-warmup − L_qat-warmup) − (L_late − L_qat)

each a per-seed contrast with a Student-t interval over seeds, reported as a ratio (and %):
a fractional-bits ratio of 0.95 means fractional bits lower the loss by 5 % on average over
the two warm-up levels; an interaction ratio near 1 means the two effects simply multiply.
"""

from __future__ import annotations

import numpy as np

from fraqat.report.stats import log_interval

ARMS = {("no", "no"): "qat", ("no", "yes"): "qat-warmup", ("yes", "no"): "fraqat-late",
        ("yes", "yes"): "fraqat-late-warmup"}  # (fractional bits, warm-up) -> method
EFFECTS = {"fractional bits": ((0.5, "yes", "no"), (0.5, "yes", "yes"), (-0.5, "no", "no"),
                               (-0.5, "no", "yes")),
           "warm-up": ((0.5, "no", "yes"), (0.5, "yes", "yes"), (-0.5, "no", "no"),
                       (-0.5, "yes", "no")),
           "interaction": ((1.0, "yes", "yes"), (-1.0, "no", "yes"), (-1.0, "yes", "no"),
                           (1.0, "no", "no"))}


def missing_arms(values: dict[str, dict[int, float]]) -> list[str]:
    """The factorial's methods with no values."""
    return [m for m in ARMS.values() if not values.get(m)]


def effects(values: dict[str, dict[int, float]]) -> dict[str, dict | None]:
    """Main effects and interaction from ``{method: {seed: value}}`` (module docstring), over
    the seeds all four arms share; every effect None when an arm is missing or a value is not
    positive. Each effect is :func:`fraqat.report.stats.log_interval`'s dict."""
    if missing_arms(values):
        return {name: None for name in EFFECTS}
    seeds = sorted(set.intersection(*(set(values[m]) for m in ARMS.values())))
    table = {key: np.array([values[m][s] for s in seeds], float) for key, m in ARMS.items()}
    if not seeds or any(np.any(v <= 0) for v in table.values()):
        return {name: None for name in EFFECTS}
    logs = {key: np.log(v) for key, v in table.items()}
    return {name: log_interval(sum(w * logs[(f, warm)] for w, f, warm in terms))
            for name, terms in EFFECTS.items()}
