"""Stage ``teacher``: run the FP teacher once over the calibration set and cache its velocities.

QAT then distils against this file and never runs the teacher (see
``benchmarks/distill_cache.py`` for the speed-up).
"""

from __future__ import annotations

import logging

from fraqat import paths
from fraqat.artifacts import load_calibration
from fraqat.io import save_tensors
from fraqat.models.registry import load_teacher, predict_all
from fraqat.models.trajectory import predict_points
from fraqat.params import Params
from fraqat.train.distributed import resolve_device

log = logging.getLogger(__name__)




def run(params: Params) -> None:
    model = load_teacher(paths.TEACHER)
    calib = load_calibration()
    if params.model != "tiny-sana":  # a real pipeline: bf16 cache of training + probe points
        model.to(resolve_device(params.device))
        v = predict_points(model, calib["x_t"], calib["t"], calib["labels"])
        probe_v = predict_points(model, calib["probe_x_t"], calib["probe_t"],
                                 calib["probe_labels"])
        save_tensors(paths.TEACHER_OUTPUTS, {"v": v.bfloat16(), "probe_v": probe_v.bfloat16()})
        log.info("teacher outputs: %s (bf16) -> %s", tuple(v.shape), paths.TEACHER_OUTPUTS)
        return
    v = predict_all(model, calib)
    save_tensors(paths.TEACHER_OUTPUTS, {"v": v})
    log.info("teacher outputs: %s -> %s", tuple(v.shape), paths.TEACHER_OUTPUTS)
