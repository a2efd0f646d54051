"""Stage ``calibrate``: the fixed set QAT trains on, and the validation set tuning reads.

The train split's images are cut in two by a seeded permutation: ``validation_fraction`` of
them form the validation set (``validation_samples`` triples, read only by ``tune`` to choose
learning rates), the rest feed the ``num_samples`` calibration triples (image, noise, t) that
QAT trains on and the activation observers see. The held-out split, which the reported metrics
use, is touched by neither. Both files keep the noisy input ``x_t`` and the prompt labels, so
later stages never re-draw randomness.

For a real model (``model_path``: a diffusers pipeline folder) the points lie on the
pipeline's own sampling trajectories from seeded noise (:mod:`fraqat.models.trajectory`), and the
prompts are encoded once by its text encoders (``cond.*`` in the same file).
"""

from __future__ import annotations

import json
import logging

import torch

from fraqat import paths
from fraqat.artifacts import load_split
from fraqat.io import save_tensors
from fraqat.models.folder import load_pipeline, model_family, read_prompts
from fraqat.models.rectified_flow import noisy
from fraqat.models.trajectory import calibration_set
from fraqat.params import Params
from fraqat.train.distributed import resolve_device

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
    if params.model != "tiny-sana":
        run_pipeline(params)
        return
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


def run_pipeline(params: Params) -> None:
    c = params.calibration
    pipe = load_pipeline(params.model, params.model_path, params.allow_download)
    pipe.to(resolve_device(params.device))
    family, prompts = model_family(params.model), read_prompts(params.prompts_path)
    log.info("%s (%s): %d prompts, %d + %d probe + %d validation points at %d px, %d steps",
             params.model, family.name, len(prompts), c.num_samples, params.train.probe_samples,
             c.validation_samples, params.resolution, params.eval.steps)
    data, val = calibration_set(pipe, family, prompts, c.num_samples, params.train.probe_samples,
                                c.validation_samples, c.seed, params.resolution,
                                params.eval.steps, params.eval.guidance_scale)
    meta = {"model": params.model, "family": family.name, "resolution": str(params.resolution),
            "prompts": json.dumps(prompts)}
    save_tensors(paths.CALIBRATION, data, metadata=meta)
    save_tensors(paths.VALIDATION, val, metadata=meta)
    log.info("calibration set: x_t %s -> %s; validation %s -> %s", tuple(data["x_t"].shape),
             paths.CALIBRATION, tuple(val["x_t"].shape), paths.VALIDATION)
