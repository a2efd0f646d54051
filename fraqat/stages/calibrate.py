"""Stage ``calibrate``: the fixed set QAT trains on, and the validation set tuning reads.

The model's backend (:mod:`fraqat.backends`) draws both. The embedded default cuts the train
split's images in two by a seeded permutation: ``validation_fraction`` of them form the
validation set (``validation_samples`` triples, read only by ``tune`` to choose learning
rates), the rest feed the ``num_samples`` calibration triples (image, noise, t) that QAT trains
on and the activation observers see. A real model's points lie on the pipeline's own sampling
trajectories from seeded noise, with probe points and its encoded prompts (``cond.*``) in the
same file. The held-out split, which the reported metrics use, is touched by neither. Both
files keep the noisy input ``x_t`` and the prompt labels, so later stages never re-draw
randomness.
"""

from __future__ import annotations

import logging

from fraqat import paths
from fraqat.backends import backend_of
from fraqat.io import save_tensors
from fraqat.params import Params

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    calib, val, meta = backend_of(params).calibration_sets(params)
    save_tensors(paths.CALIBRATION, calib, metadata=meta)
    save_tensors(paths.VALIDATION, val, metadata=meta)
    log.info("calibration set: x_t %s -> %s; validation %s -> %s", tuple(calib["x_t"].shape),
             paths.CALIBRATION, tuple(val["x_t"].shape), paths.VALIDATION)
