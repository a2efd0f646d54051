"""Training stability from a loss curve: the paper's case for FraQAT is that direct low-bit QAT
is unstable, so the spikes and divergences are measured, not only the final loss.

* ``max_spike``   max_k loss_k / median(loss_{k-w} .. loss_{k-1}): 1 is a flat curve, 10 a step
                  whose loss jumped to ten times its recent level (``w`` = ``window``).
* ``diverged``    the run ended above where it started (mean of the last 5 % of the steps >
                  the first step's loss) or produced a non-finite loss.
* ``final_loss``  mean of the last 5 % of the steps (at least one).
"""

from __future__ import annotations

import math
import statistics


def max_spike(losses: list[float], window: int = 20) -> tuple[float, int]:
    """(largest loss / running median of the previous ``window`` losses, its step); (1, 0) if
    the curve is shorter than two steps."""
    best, at = 1.0, 0
    for k in range(1, len(losses)):
        med = statistics.median(losses[max(0, k - window):k])
        ratio = losses[k] / med if med > 0 else math.inf
        if not math.isfinite(losses[k]) or ratio > best:
            best, at = (math.inf if not math.isfinite(losses[k]) else ratio), k
    return best, at


def stability(losses: list[float], window: int = 20) -> dict:
    """The stability metrics of one training curve (module docstring)."""
    if not losses:
        raise ValueError("losses=[] is not allowed (allowed: a non-empty list of losses)")
    tail = losses[-max(1, len(losses) // 20):]
    final = sum(tail) / len(tail)
    spike, at = max_spike(losses, window)
    diverged = not all(math.isfinite(v) for v in losses) or final > losses[0]
    return {"max_spike": spike, "max_spike_step": at, "diverged": diverged, "final_loss": final}
