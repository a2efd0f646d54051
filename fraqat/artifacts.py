"""The read side of :mod:`fraqat.paths`: loaders for the files one stage hands the next.

Stages import these instead of each other, so a stage's code dependencies are the library,
never another stage. A missing or bad file is one line saying which stage writes it
(:mod:`fraqat.checked`).
"""

from __future__ import annotations

import torch

from fraqat import paths
from fraqat.data import ImageSet
from fraqat.io import load_tensors, read_json


def load_split(name: str) -> ImageSet:
    """``train`` or ``heldout`` images + labels written by ``fraqat prepare``."""
    t = load_tensors(paths.DATASET / f"{name}.safetensors", ("images", "labels"))
    return ImageSet(t["images"], t["labels"])


def load_calibration() -> dict[str, torch.Tensor]:
    """The calibration set written by ``fraqat calibrate`` (x_t, t, labels, ...)."""
    return load_tensors(paths.CALIBRATION, ("x_t", "t", "labels"))


def load_tuned_lrs() -> dict[str, float]:
    """The learning rate ``fraqat tune`` chose per method (empty before ``tune`` has run:
    a method that needs one then stops with one line, see ``train.student.peak_lr``)."""
    return dict(read_json(paths.TUNE, ("chosen",))["chosen"]) if paths.TUNE.exists() else {}
