"""The calibration set on disk (``data/calibration.safetensors``), as the stages read it.

Written by the ``calibrate`` stage: seeded noisy samples ``x_t``, times ``t``, prompt labels
(and ``x0``/``noise``); read by ``teacher``, ``train`` and ``export``, so the loader lives in
the library rather than in one of those stages.
"""

from __future__ import annotations

import torch

from fraqat import paths
from fraqat.errors import FraqatError
from fraqat.io import load_tensors


def load_calibration() -> dict[str, torch.Tensor]:
    if not paths.CALIBRATION.exists():
        raise FraqatError(f"no calibration set at {paths.CALIBRATION} "
                          "(run `dvc repro calibrate` first)")
    return load_tensors(paths.CALIBRATION)
