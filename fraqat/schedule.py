"""Weight bit-width schedules: pure objects answering ``bits_at(step)``.

* ``constant``        standard QAT: the target bits from step 0.
* ``fraqat``          FraQAT: optional FP warm-up, then start -> start-step -> ... -> target
                      (8 -> 7.5 -> ... -> 4.5 -> 4 by default), each level held for a stage.
* ``int-progressive`` the same with integer steps only (8 -> 7 -> ... -> 4), an ablation.
* ``continuous``      b decays linearly from start to target, then holds the target.

Stage lengths: ``shape="equal"`` splits the progressive part equally between levels;
``shape="linear"`` makes stage i (0-based) last proportionally to i+1, so lower bit-widths get
more steps. ``final_fraction`` reserves that share of all steps for the target level (the rest is
shared by the higher levels). The last step is always at the target exactly.

Learning-rate shapes (:func:`make_lr_schedule`, ``lr_at(step)``), after a linear warm-up of
``warmup`` steps (``lr = peak * (k + 1) / warmup``), each a cosine ``peak * (1 + cos(pi p)) / 2``
over a segment with progress ``p`` in [0, 1]:

* ``cosine``            one cosine over the whole run (the target stage gets its tail).
* ``cosine-per-stage``  a fresh cosine in every constant-bits stage.
* ``restart``           one cosine over the high-bit stages, a fresh one over the target stage
                        (the target stage gets the whole cosine, as a QAT run of its length).
* ``constant``          ``peak`` after the warm-up.

``offset`` shifts the run into the schedule (``lr_at(k)`` is the value at step ``k + offset``):
the target-steps control takes FraQAT's lr values from its first target step on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from fraqat.quant.core import check_bits

SCHEDULES = ("constant", "fraqat", "int-progressive", "continuous")
SHAPES = ("equal", "linear")
LR_SHAPES = ("cosine", "cosine-per-stage", "restart", "constant")


class Schedule(Protocol):
    """What the trainer asks of a schedule.

    ``boundaries``: the first step of each stage (``(0,)`` for one stage), where a per-stage
    learning-rate shape restarts.
    """

    @property
    def target(self) -> float | None: ...
    @property
    def total_steps(self) -> int: ...
    @property
    def boundaries(self) -> tuple[int, ...]: ...
    def bits_at(self, step: int) -> float | None: ...


@dataclass(frozen=True)
class ConstantSchedule:
    target: float
    total_steps: int
    boundaries: tuple[int, ...] = (0,)

    def bits_at(self, step: int) -> float:
        return self.target


@dataclass(frozen=True)
class ProgressiveSchedule:
    """Piecewise-constant levels; ``boundaries[i]`` is the first step of ``levels[i]``."""

    levels: tuple[float | None, ...]
    boundaries: tuple[int, ...]
    total_steps: int

    @property
    def target(self) -> float | None:
        return self.levels[-1]

    def bits_at(self, step: int) -> float | None:
        idx = 0
        for i, start in enumerate(self.boundaries):
            if step >= start:
                idx = i
        return self.levels[idx]


@dataclass(frozen=True)
class ContinuousSchedule:
    start: float
    target: float
    decay_steps: int
    fp_steps: int
    total_steps: int

    @property
    def boundaries(self) -> tuple[int, ...]:
        return (0, self.fp_steps) if self.fp_steps else (0,)

    def bits_at(self, step: int) -> float | None:
        if step < self.fp_steps:
            return None
        k = step - self.fp_steps
        if k >= self.decay_steps:  # exactly the target (no float round-off), also if 0 steps
            return self.target
        return self.start + (self.target - self.start) * k / self.decay_steps


def steps_at_target(schedule: Schedule) -> int:
    """How many steps train at the target bits: the budget FraQAT spends there."""
    return sum(schedule.bits_at(k) == schedule.target for k in range(schedule.total_steps))


def bit_levels(start: float, target: float, step: float) -> list[float]:
    """start, start-step, ..., down to target (target always included, never overshot)."""
    levels, b = [], start
    while b > target + 1e-9:
        levels.append(round(b, 6))
        b -= step
    return levels + [target]


def _split(total: int, weights: list[float]) -> list[int]:
    """Integer stage lengths proportional to ``weights`` summing to ``total``."""
    raw = [total * w / sum(weights) for w in weights]
    lengths = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - lengths[i], reverse=True):
        if sum(lengths) == total:
            break
        lengths[i] += 1
    return lengths


def make_schedule(name: str, target: float, total_steps: int, *, start: float = 8.0,
                  step: float = 0.5, shape: str = "equal", fp_warmup: float = 0.0,
                  final_fraction: float | None = None):
    """Build a schedule; every argument is validated with a one-line ValueError."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r} is not allowed (allowed: {', '.join(SCHEDULES)})")
    target = check_bits(target, "bits")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r} is not allowed (allowed: an integer >= 1)")
    if name == "constant":
        return ConstantSchedule(target, total_steps)
    start = check_bits(start, "start_bits")
    if start < target:
        raise ValueError(f"start_bits={start} is below the target bits={target} "
                         "(allowed: start_bits >= bits)")
    if not (isinstance(step, (int, float)) and 0 < step <= 8):
        raise ValueError(f"step={step!r} is not allowed (allowed: a number in (0, 8])")
    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r} is not allowed (allowed: {', '.join(SHAPES)})")
    if not 0.0 <= fp_warmup < 1.0:
        raise ValueError(f"fp_warmup={fp_warmup!r} is not allowed (allowed: a fraction in [0, 1))")
    if final_fraction is not None and not 0.0 < final_fraction <= 1.0:
        raise ValueError(f"final_fraction={final_fraction!r} is not allowed "
                         "(allowed: null or a fraction in (0, 1])")
    fp_steps = min(int(round(fp_warmup * total_steps)), total_steps - 1)  # target at the end
    rest = total_steps - fp_steps
    final_steps = int(round(final_fraction * rest)) if final_fraction else 0
    if name == "continuous":
        return ContinuousSchedule(start, target, max(0, rest - final_steps - 1), fp_steps,
                                  total_steps)
    if name == "int-progressive":
        step, start = 1.0, float(math.ceil(start))
    levels = bit_levels(start, target, step)
    if final_steps:
        upper = levels[:-1]
        weights = [1.0] * len(upper) if shape == "equal" else [i + 1.0 for i in range(len(upper))]
        lengths = (_split(rest - final_steps, weights) if upper else []) + [final_steps]
    else:
        weights = [1.0] * len(levels) if shape == "equal" else [i + 1.0 for i in range(len(levels))]
        lengths = _split(rest, weights)
    # the target stage always gets at least the last step
    if lengths[-1] == 0:
        lengths[-1] = 1
        lengths[max(i for i in range(len(lengths) - 1) if lengths[i] > 0)] -= 1
    all_levels = ([None] if fp_steps else []) + levels
    all_lengths = ([fp_steps] if fp_steps else []) + lengths
    boundaries, pos = [], 0
    for n in all_lengths:
        boundaries.append(pos)
        pos += n
    kept = [(lv, b) for lv, b, n in zip(all_levels, boundaries, all_lengths, strict=True) if n > 0]
    return ProgressiveSchedule(tuple(lv for lv, _ in kept), tuple(b for _, b in kept),
                               total_steps)


def stage_boundaries(schedule) -> tuple[int, ...]:
    """First step of every constant-bits stage (0 always; every step where the bits change)."""
    bits = [schedule.bits_at(k) for k in range(schedule.total_steps)]
    return (0,) + tuple(k for k in range(1, len(bits)) if bits[k] != bits[k - 1])


def first_target_step(schedule) -> int:
    """The step from which the schedule stays at its target bits."""
    return stage_boundaries(schedule)[-1] if schedule.bits_at(0) != schedule.target else 0


@dataclass(frozen=True)
class LRSchedule:
    """``lr_at(step)`` of one shape (module docstring); ``boundaries`` are the stage starts."""

    shape: str
    peak: float
    total_steps: int
    warmup: int = 0
    boundaries: tuple[int, ...] = (0,)
    offset: int = 0

    def segment(self, k: int) -> tuple[int, int]:
        """The [start, end) steps that one cosine spans around step ``k``."""
        if self.shape == "cosine-per-stage":
            starts = [b for b in self.boundaries if b <= k] or [0]
            ends = [b for b in self.boundaries if b > k] + [self.total_steps]
            return starts[-1], ends[0]
        if self.shape == "restart" and len(self.boundaries) > 1:
            last = self.boundaries[-1]
            return (last, self.total_steps) if k >= last else (0, last)
        return 0, self.total_steps

    def lr_at(self, step: int) -> float:
        k = step + self.offset
        if k < self.warmup:
            return self.peak * (k + 1) / self.warmup
        if self.shape == "constant":
            return self.peak
        start, end = self.segment(k)
        start = max(start, min(self.warmup, end - 1))
        progress = min(1.0, (k - start) / max(1, end - start))
        return self.peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_lr_schedule(shape: str, peak: float, schedule, *, warmup: int = 0,
                     offset: int = 0) -> LRSchedule:
    """The lr of ``shape`` over the stages of the bit ``schedule``; one-line ValueError if bad."""
    if shape not in LR_SHAPES:
        raise ValueError(f"lr_schedule={shape!r} is not allowed (allowed: {', '.join(LR_SHAPES)})")
    if not (isinstance(peak, (int, float)) and 0 < peak < math.inf):
        raise ValueError(f"lr={peak!r} is not allowed (allowed: a finite number > 0)")
    for name, v in (("warmup_steps", warmup), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}={v!r} is not allowed (allowed: an integer >= 0)")
    return LRSchedule(shape, float(peak), schedule.total_steps, warmup,
                      stage_boundaries(schedule), offset)
