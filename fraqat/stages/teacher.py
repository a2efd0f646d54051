"""Stage ``teacher``: run the FP teacher once over the calibration set and cache its velocities.

QAT then distils against this file and never runs the teacher (see
``benchmarks/distill_cache.py`` for the speed-up).
"""

from __future__ import annotations

import logging

from fraqat import paths
from fraqat.artifacts import load_calibration
from fraqat.io import save_tensors
from fraqat.models import load_teacher, predict_all
from fraqat.params import Params

log = logging.getLogger(__name__)




def run(params: Params) -> None:
    model = load_teacher(paths.TEACHER)
    calib = load_calibration()
    v = predict_all(model, calib)
    save_tensors(paths.TEACHER_OUTPUTS, {"v": v})
    log.info("teacher outputs: %s -> %s", tuple(v.shape), paths.TEACHER_OUTPUTS)
