"""Stage ``pretrain``: the FP teacher in ``data/teacher``, and its weights' statistics.

The embedded default's teacher is trained here with flow matching (stands in for
"download the pretrained checkpoint": :mod:`fraqat.train.pretrain`); a real model's is its
pipeline's, which ``data/teacher`` points at (:mod:`fraqat.backends`).
``outliers.fraction > 0`` then rescales the embedded teacher's channel pairs
(:mod:`fraqat.models.outliers`: same FP function, weights with outliers like a large pretrained
DiT's); ``reports/teacher.json`` holds the weights' abs-max/std and kurtosis either way.
"""

from __future__ import annotations

import logging

from fraqat import paths
from fraqat.backends import backend_of
from fraqat.io import write_json
from fraqat.models.outliers import summarize, weight_stats
from fraqat.params import Params

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    transformer, outliers = backend_of(params).make_teacher(params)
    stats = weight_stats(transformer)
    log.info("teacher weights: %s", summarize(stats))
    write_json(paths.TEACHER_REPORT, {**summarize(stats), **outliers, "layers": stats})
