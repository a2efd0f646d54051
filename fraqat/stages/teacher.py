"""Stage ``teacher``: run the FP teacher once over the calibration set and cache its outputs.

QAT then distils against this file and never runs the teacher (see
``benchmarks/distill_cache.py`` for the speed-up). What is cached is the backend's
(:mod:`fraqat.backends`): a real pipeline's also holds its probe points' outputs, in bf16.
"""

from __future__ import annotations

import logging

from fraqat import paths
from fraqat.artifacts import load_calibration
from fraqat.backends import backend_of
from fraqat.io import save_tensors
from fraqat.models.registry import load_teacher
from fraqat.params import Params

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    model = load_teacher(paths.TEACHER)
    outputs = backend_of(params).teacher_outputs(params, model, load_calibration())
    save_tensors(paths.TEACHER_OUTPUTS, outputs)
    log.info("teacher outputs: %s -> %s", {k: tuple(v.shape) for k, v in outputs.items()},
             paths.TEACHER_OUTPUTS)
