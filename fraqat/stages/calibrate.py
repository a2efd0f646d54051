"""Stage ``calibrate``: the fixed set QAT trains on and the activation observers see.

``calibration.num_samples`` triples (image, noise, t) drawn with a fixed seed from the training
split; stored with the noisy input ``x_t`` and the prompt labels, so later stages never
re-draw randomness.
"""

from __future__ import annotations

import logging

import torch

from fraqat import paths
from fraqat.artifacts import load_split
from fraqat.flow import noisy
from fraqat.io import save_tensors
from fraqat.params import Params

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    c = params.calibration
    train = load_split("train")
    g = torch.Generator().manual_seed(c.seed)
    idx = torch.randint(0, len(train.labels), (c.num_samples,), generator=g)
    x0 = train.images[idx]
    noise = torch.randn(x0.shape, generator=g)
    t = torch.rand(c.num_samples, generator=g)  # uniform: covers the whole sampling path
    save_tensors(paths.CALIBRATION, {"x_t": noisy(x0, noise, t), "t": t, "x0": x0,
                                     "noise": noise, "labels": train.labels[idx]})
    log.info("calibration set: %d samples -> %s", c.num_samples, paths.CALIBRATION)
