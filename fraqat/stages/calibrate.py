"""Stage ``calibrate``: the fixed set QAT trains on, and the validation set tuning reads.

The train split's images are cut in two by a seeded permutation: ``validation_fraction`` of
them form the validation set (``validation_samples`` triples, read only by ``tune`` to choose
learning rates), the rest feed the ``num_samples`` calibration triples (image, noise, t) that
QAT trains on and the activation observers see. The held-out split, which the reported metrics
use, is touched by neither. Both files keep the noisy input ``x_t`` and the prompt labels, so
later stages never re-draw randomness.
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


def draw(images: torch.Tensor, labels: torch.Tensor, n: int,
         g: torch.Generator) -> dict[str, torch.Tensor]:
    """``n`` seeded (image, noise, t) triples, t uniform: covers the whole sampling path."""
    idx = torch.randint(0, len(labels), (n,), generator=g)
    x0 = images[idx]
    noise = torch.randn(x0.shape, generator=g)
    t = torch.rand(n, generator=g)
    return {"x_t": noisy(x0, noise, t), "t": t, "x0": x0, "noise": noise, "labels": labels[idx]}


def split_validation(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (calibration, validation) index sets of ``range(n)``; validation >= 1 image."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(n - 1, max(1, round(fraction * n)))
    return perm[n_val:], perm[:n_val]


def run(params: Params) -> None:
    c = params.calibration
    train = load_split("train")
    calib_idx, val_idx = split_validation(len(train.labels), c.validation_fraction, c.seed)
    g = torch.Generator().manual_seed(c.seed)
    save_tensors(paths.CALIBRATION,
                 draw(train.images[calib_idx], train.labels[calib_idx], c.num_samples, g))
    save_tensors(paths.VALIDATION,
                 draw(train.images[val_idx], train.labels[val_idx], c.validation_samples, g))
    log.info("calibration set: %d samples from %d images -> %s; validation: %d samples from "
             "%d other images -> %s", c.num_samples, len(calib_idx), paths.CALIBRATION,
             c.validation_samples, len(val_idx), paths.VALIDATION)
