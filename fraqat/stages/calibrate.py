"""Stage ``calibrate``: the fixed set QAT trains on and the activation observers see.

``calibration.num_samples`` triples (image, noise, t) drawn with a fixed seed from the training
split; stored with the noisy input ``x_t`` and the prompt labels, so later stages never
re-draw randomness.

For a real model (``model_path``: a diffusers pipeline folder) the points lie on the
pipeline's own sampling trajectories from seeded noise (:mod:`fraqat.trajectory`), and the
prompts are encoded once by its text encoders (``cond.*`` in the same file).
"""

from __future__ import annotations

import json
import logging

import torch

from fraqat import paths
from fraqat.artifacts import load_split
from fraqat.distributed import resolve_device
from fraqat.flow import noisy
from fraqat.io import save_tensors
from fraqat.params import Params
from fraqat.pipeline_folder import load_pipeline, model_family, read_prompts
from fraqat.trajectory import calibration_set

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    if params.model != "tiny-sana":
        run_pipeline(params)
        return
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


def run_pipeline(params: Params) -> None:
    c = params.calibration
    pipe = load_pipeline(params.model, params.model_path, params.allow_download)
    pipe.to(resolve_device(params.device))
    family, prompts = model_family(params.model), read_prompts(params.prompts_path)
    log.info("%s (%s): %d prompts, %d + %d probe points at %d px, %d steps", params.model,
             family.name, len(prompts), c.num_samples, params.train.probe_samples,
             params.resolution, params.eval.steps)
    data = calibration_set(pipe, family, prompts, c.num_samples, params.train.probe_samples,
                           c.seed, params.resolution, params.eval.steps,
                           params.eval.guidance_scale)
    save_tensors(paths.CALIBRATION, data, metadata={
        "model": params.model, "family": family.name, "resolution": str(params.resolution),
        "prompts": json.dumps(prompts)})
    log.info("calibration set: x_t %s -> %s", tuple(data["x_t"].shape), paths.CALIBRATION)
