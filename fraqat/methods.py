"""Every method as a frozen recipe: the one place a method's name and behaviour are written.

:mod:`fraqat.train.student` turns a recipe into a bit schedule, a step budget and a
learning-rate curve; ``params.yaml`` validation, the CLI's help, the fair table's groups, the
plots' colours and the export's choices are all read from :data:`REGISTRY`. A control mirrors
``schedule.control_of`` (a fractional method chosen in ``params.yaml``). Adding a method is one
entry below and its test in ``tests/test_methods.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# constant: the target bits from the first step; fractional: ``schedule.fraqat_kind`` (the
# paper's stages or their continuous version); int-progressive: integer levels only.
BitSchedule = Literal["constant", "fractional", "int-progressive"]
FinalKnob = Literal["final_fraction", "late_final_fraction"]  # the ``schedule.*`` share it reads
LRRule = Literal["tuned", "mirrored", "untuned"]  # own tuned lr / control_of's / train.lr
# none: only ``train.warmup_steps``; own-high-bits: plus its own steps above the target bits;
# mirrored-high-bits: plus as many steps as ``schedule.control_of`` spends above them.
WarmupRule = Literal["none", "own-high-bits", "mirrored-high-bits"]
# full: ``train.steps``; mirrored-target: only the target-bit steps of ``schedule.control_of``,
# with the learning-rate values its target stage gets.
StepsRule = Literal["full", "mirrored-target"]
# reference: the FP teacher; floor: no training; baseline: standard QAT, what all compare to
Group = Literal["reference", "floor", "baseline", "fractional", "control"]


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    group: Group
    schedule: BitSchedule | None = "constant"  # None: no quantized student (the teacher)
    final_fraction: FinalKnob = "final_fraction"
    lr: LRRule = "tuned"
    warmup: WarmupRule = "none"
    steps: StepsRule = "full"
    trains: bool = True  # False: calibrated only, zero training steps

    @property
    def has_run(self) -> bool:
        """Does the ``train`` stage write a run (``data/runs/<name>/s<seed>``) for it?"""
        return self.schedule is not None

    @property
    def is_control(self) -> bool:
        """Compared with ``schedule.control_of`` as well as with the baseline."""
        return self.group == "control"


_ENTRIES = (
    Method("fp", "the full-precision teacher (evaluation only)", "reference", schedule=None,
           lr="untuned", trains=False),
    Method("ptq", "round-to-nearest weights, calibrated activations, zero training steps: the "
           "floor every QAT must beat", "floor", lr="untuned", trains=False),
    Method("qat", "standard QAT: the target bits from the first step", "baseline"),
    Method("qat-warmup", "the implicit-warm-up control: standard QAT whose learning rate ramps "
           "up over as many steps as control_of spends above the target bits", "control",
           warmup="mirrored-high-bits"),
    Method("fraqat", "FraQAT: 8 -> 7.5 -> ... -> bits in the paper's equal stages",
           "fractional", schedule="fractional"),
    Method("fraqat-late", "FraQAT's levels with schedule.late_final_fraction of the steps at "
           "the target bits", "fractional", schedule="fractional",
           final_fraction="late_final_fraction"),
    Method("int-progressive", "integer levels only: 8 -> 7 -> ... -> bits", "fractional",
           schedule="int-progressive"),
    Method("qat-target-steps", "the target-steps control: standard QAT on only the steps "
           "control_of spends at the target bits, with the same learning-rate values",
           "control", lr="mirrored", steps="mirrored-target"),
    Method("fraqat-late-warmup", "fraqat-late with the linear warm-up qat-warmup gets (over "
           "its high-bit stages): its learning-rate curve is qat-warmup's", "fractional",
           schedule="fractional", final_fraction="late_final_fraction",
           warmup="own-high-bits"),
)
REGISTRY: dict[str, Method] = {m.name: m for m in _ENTRIES}
NAMES: tuple[str, ...] = tuple(REGISTRY)
RUN_NAMES: tuple[str, ...] = tuple(m.name for m in _ENTRIES if m.has_run)
BASELINE: str = next(m.name for m in _ENTRIES if m.group == "baseline")
REFERENCE: str = next(m.name for m in _ENTRIES if m.group == "reference")  # the FP teacher


def in_group(group: Group) -> tuple[str, ...]:
    """The methods of one group, in registry order."""
    return tuple(m.name for m in _ENTRIES if m.group == group)


def get(name: str) -> Method:
    """The recipe of ``name``; one line naming the allowed methods if there is none."""
    if name not in REGISTRY:
        raise ValueError(f"method {name!r} is not known (allowed: {', '.join(NAMES)})")
    return REGISTRY[name]
