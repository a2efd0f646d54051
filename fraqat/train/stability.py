"""Training stability from a loss curve: the paper's case for FraQAT is that direct low-bit QAT
is unstable, so the spikes and divergences are measured, not only the final loss.

Each constant-bits stage is its own segment: a planned drop of the bit-width raises the loss
by design, so it is not counted as a spike.

* ``max_spike``   max_k loss_k / median(previous ``window`` losses of the same stage): 1 is a
                  curve that never rises above its recent level, 10 a step whose loss jumped to
                  ten times it.
* ``diverged``    a non-finite loss, or the run ended above where its target-bit stage started
                  (mean of the last 5 % of the steps > the loss of the first target-bit step):
                  training at the target bits made the loss worse.
* ``final_loss``  mean of the last 5 % of the steps (at least one).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def stage_starts(bits: Sequence[object]) -> list[int]:
    """For every step, the first step of its constant-bits stage."""
    out, start = [], 0
    for k, b in enumerate(bits):
        if k and b != bits[k - 1]:
            start = k
        out.append(start)
    return out


def max_spike(losses: Sequence[float], bits: Sequence[object] | None = None,
              window: int = 20) -> tuple[float, int]:
    """(largest loss / running median of the previous ``window`` losses in its stage, its
    step); (1, 0) when no step has a predecessor in its stage."""
    starts = stage_starts(bits if bits is not None else [0] * len(losses))
    best, at = 1.0, 0
    for k in range(1, len(losses)):
        prev = losses[max(starts[k], k - window):k]
        if not prev:
            continue
        if not math.isfinite(losses[k]):
            return math.inf, k
        med = statistics.median(prev)
        ratio = losses[k] / med if med > 0 else math.inf
        if ratio > best:
            best, at = ratio, k
    return best, at


def stability(losses: Sequence[float], bits: Sequence[object] | None = None,
              window: int = 20) -> dict:
    """The stability metrics of one training curve (module docstring)."""
    if not losses:
        raise ValueError("losses=[] is not allowed (allowed: a non-empty list of losses)")
    tail = losses[-max(1, len(losses) // 20):]
    final = sum(tail) / len(tail)
    spike, at = max_spike(losses, bits, window)
    first_target = stage_starts(bits)[-1] if bits is not None else 0
    diverged = not all(math.isfinite(v) for v in losses) or final > losses[first_target]
    return {"max_spike": spike, "max_spike_step": at, "diverged": diverged, "final_loss": final}
