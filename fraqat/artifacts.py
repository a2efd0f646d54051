"""The read side of :mod:`fraqat.paths`: loaders for the files one stage hands the next.

Stages import these instead of each other, so a stage's code dependencies are the library,
never another stage. A missing file is one line saying which stage writes it.
"""

from __future__ import annotations

import torch

from fraqat import paths
from fraqat.data import ImageSet
from fraqat.errors import FraqatError
from fraqat.io import load_tensors


def load_split(name: str) -> ImageSet:
    """``train`` or ``heldout`` images + labels written by ``fraqat prepare``."""
    path = paths.DATASET / f"{name}.safetensors"
    if not path.exists():
        raise FraqatError(f"no dataset at {path} (run `dvc repro prepare` first)")
    t = load_tensors(path)
    return ImageSet(t["images"], t["labels"])


def load_calibration() -> dict[str, torch.Tensor]:
    """The calibration set written by ``fraqat calibrate`` (x_t, t, labels, ...)."""
    if not paths.CALIBRATION.exists():
        raise FraqatError(f"no calibration set at {paths.CALIBRATION} "
                          "(run `dvc repro calibrate` first)")
    return load_tensors(paths.CALIBRATION)


def load_validation() -> dict[str, torch.Tensor]:
    """The validation set written by ``fraqat calibrate`` (read only by ``tune``)."""
    if not paths.VALIDATION.exists():
        raise FraqatError(f"no validation set at {paths.VALIDATION} "
                          "(run `dvc repro calibrate` first)")
    return load_tensors(paths.VALIDATION)
