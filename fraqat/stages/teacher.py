"""Stage ``teacher``: run the FP teacher once over the calibration set and cache its velocities.

QAT then distils against this file and never runs the teacher (see
``benchmarks/distill_cache.py`` for the speed-up).
"""

from __future__ import annotations

import logging

import torch

from fraqat import paths
from fraqat.calibration import load_calibration
from fraqat.data import prompt_for
from fraqat.io import save_tensors
from fraqat.models import TextToImage, load_teacher
from fraqat.params import Params

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_all(model: TextToImage, calib: dict[str, torch.Tensor],
                batch_size: int = 512) -> torch.Tensor:
    out = []
    for i in range(0, len(calib["t"]), batch_size):
        sl = slice(i, i + batch_size)
        hidden, mask = model.encode([prompt_for(y) for y in calib["labels"][sl]])
        out.append(model.predict(calib["x_t"][sl], calib["t"][sl], hidden, mask))
    return torch.cat(out)


def run(params: Params) -> None:
    model = load_teacher(paths.TEACHER)
    calib = load_calibration()
    v = predict_all(model, calib)
    save_tensors(paths.TEACHER_OUTPUTS, {"v": v})
    log.info("teacher outputs: %s -> %s", tuple(v.shape), paths.TEACHER_OUTPUTS)
