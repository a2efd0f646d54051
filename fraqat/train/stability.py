"""Training stability from a loss curve: the paper's case for FraQAT is that direct low-bit QAT
is unstable, so the spikes and divergences are measured, not only the final loss.

Each constant-bits stage is its own segment: a planned drop of the bit-width raises the loss
by design, so it is not counted as a spike. A spike's size is the loss over the running median
of the previous ``window`` losses of the same stage; it is reported in three parts, because
the first steps of a run or of a stage say something else than the rest:

* ``first_update_spike``  the run's first update (step 1 over step 0): a full-rate optimizer
                          step on a near-lossless 8-bit start, divided by a tiny loss, is
                          large without any instability later.
* ``stage_start_spike``   the largest spike within the first ``settle`` steps of each stage
                          (the first update excluded): the optimizer meeting a new grid.
* ``steady_spike``        the largest spike everywhere else: the instability the paper means.
* ``max_spike``           the largest of the three (and ``max_spike_step`` its step).
* ``diverged``            a non-finite loss, or the run ended above where its target-bit stage
                          started (mean of the last 5 % of the steps > the loss of the first
                          target-bit step): training at the target bits made the loss worse.
* ``final_loss``          mean of the last 5 % of the steps (at least one).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

SETTLE = 10  # steps after a stage starts whose spikes count as the stage's start


def stage_starts(bits: Sequence[object]) -> list[int]:
    """For every step, the first step of its constant-bits stage."""
    out, start = [], 0
    for k, b in enumerate(bits):
        if k and b != bits[k - 1]:
            start = k
        out.append(start)
    return out


def spike_ratios(losses: Sequence[float], bits: Sequence[object] | None = None,
                 window: int = 20) -> dict[int, float]:
    """{step: loss / running median of the previous ``window`` losses in its stage} for every
    step with a predecessor in its stage (inf for a non-finite loss or a zero median)."""
    starts = stage_starts(bits if bits is not None else [0] * len(losses))
    out = {}
    for k in range(1, len(losses)):
        prev = losses[max(starts[k], k - window):k]
        if not prev:
            continue
        med = statistics.median(prev)
        out[k] = losses[k] / med if math.isfinite(losses[k]) and med > 0 else math.inf
    return out


def _largest(ratios: dict[int, float]) -> tuple[float, int]:
    best, at = 1.0, 0
    for k, r in ratios.items():
        if r > best:
            best, at = r, k
            if r == math.inf:
                break
    return best, at


def max_spike(losses: Sequence[float], bits: Sequence[object] | None = None,
              window: int = 20) -> tuple[float, int]:
    """(largest loss / running median of the previous ``window`` losses in its stage, its
    step); (1, 0) when no step has a predecessor in its stage."""
    return _largest(spike_ratios(losses, bits, window))


def spikes(losses: Sequence[float], bits: Sequence[object] | None = None, window: int = 20,
           settle: int = SETTLE) -> dict:
    """The spikes apart (module docstring): first update, stages' first ``settle`` steps,
    the steady rest, and the overall largest."""
    ratios = spike_ratios(losses, bits, window)
    starts = stage_starts(bits if bits is not None else [0] * len(losses))
    first = {k: r for k, r in ratios.items() if k == 1}
    start = {k: r for k, r in ratios.items() if k != 1 and k - starts[k] <= settle}
    steady = {k: r for k, r in ratios.items() if k != 1 and k - starts[k] > settle}
    out = {"first_update_spike": first.get(1, 1.0)}
    for name, part in (("stage_start_spike", start), ("steady_spike", steady),
                       ("max_spike", ratios)):
        out[name], out[f"{name}_step"] = _largest(part)
    return out


def stability(losses: Sequence[float], bits: Sequence[object] | None = None,
              window: int = 20) -> dict:
    """The stability metrics of one training curve (module docstring)."""
    if not losses:
        raise ValueError("losses=[] is not allowed (allowed: a non-empty list of losses)")
    tail = losses[-max(1, len(losses) // 20):]
    final = sum(tail) / len(tail)
    first_target = stage_starts(bits)[-1] if bits is not None else 0
    diverged = not all(math.isfinite(v) for v in losses) or final > losses[first_target]
    return {**spikes(losses, bits, window), "diverged": diverged, "final_loss": final}
