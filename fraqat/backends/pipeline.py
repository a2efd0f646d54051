"""A real model: a diffusers pipeline folder (``model_path``) of the sana, pixart, sd3 or
flux family (:mod:`fraqat.models.families`).

The teacher is the folder's pretrained transformer (``data/teacher`` only points at it).
Calibration, probe and validation points lie on the pipeline's own sampling trajectories
from seeded noise (:mod:`fraqat.models.trajectory`), the prompts (``prompts_path``) are
encoded once by its text encoders, and evaluation generates with its own ``__call__``, the
transformer swapped (:mod:`fraqat.eval.pipeline`). Its text encoders and VAE never load in
training: the teacher outputs are cached in bf16.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable

import torch

from fraqat import paths
from fraqat.artifacts import load_calibration, load_validation
from fraqat.eval.fid import Stats, frechet
from fraqat.eval.pipeline import clip_scorer, generate, image_features, load_reference_images
from fraqat.io import load_tensors, read_json
from fraqat.methods import REFERENCE
from fraqat.models.folder import check_inputs, load_pipeline, model_family, read_prompts
from fraqat.models.registry import (
    TextToImage,
    load_transformer,
    predict_all,
    write_pipeline_pointer,
)
from fraqat.models.trajectory import calibration_set, predict_points
from fraqat.params import Params
from fraqat.train.distributed import resolve_device
from fraqat.train.runs import load_quantized_transformer
from fraqat.train.trainer import DistillData

log = logging.getLogger(__name__)


class PipelineEvaluation:
    """One model under test: the pipeline's images, FID to ``eval.reference_path`` or the FP
    images, the CLIP score (no digit classifier to read prompt accuracy), the loss on the
    calibration set's probe points against the cached teacher outputs."""

    def __init__(self, params: Params, method: str, seed: int):
        e = self.e = params.eval
        self.params, self.method = params, method
        self.features, label = image_features(e.feature_space, paths.CLASSIFIER,
                                              e.inception_path)
        self.clip = clip_scorer(e.clip_path) if e.clip_path else None
        device = resolve_device(params.device)
        self.pipe = load_pipeline(params.model, params.model_path,
                                  params.allow_download).to(device)
        self.family = model_family(params.model)
        if method == REFERENCE:
            transformer, self.weight_bits, self.act_bits = self.pipe.transformer, None, None
        else:
            folder = paths.run_dir(method, seed)
            transformer = load_quantized_transformer(folder).to(device)
            config = read_json(folder / "quant.json")["config"]
            self.weight_bits, self.act_bits = config["weight_bits"], config["act_bits"]
        self.calib = load_tensors(paths.CALIBRATION)
        c, h, w = self.calib["x_t"].shape[1:]
        self.model = TextToImage(transformer, None, (c, h, w), prompt_table=tuple(
            self.calib[f"cond.{k}"] for k in self.family.cond_keys))
        self.fields: dict = {"feature_space": label,
                             "fid_reference": "real images" if e.reference_path
                             else "fp pipeline images",
                             "model": params.model, "resolution": params.resolution,
                             "num_images": e.num_images}
        self.sample_metadata = {"resolution": str(params.resolution)}

    def generate(self, prompts: list[str], desc: str) -> torch.Tensor:
        """Images in float16: the stored precision, so the metrics use what is on disk."""
        e = self.e
        seeds = [e.seed + i for i in range(len(prompts))]
        return generate(self.pipe, self.family, self.model.transformer, prompts, seeds,
                        self.params.resolution, e.steps, e.guidance_scale, e.batch_size,
                        desc=desc).half()

    def scorer(self, reference_fp: torch.Tensor, prompts: list[str], labels: torch.Tensor
               ) -> Callable[[torch.Tensor], dict]:
        e = self.e
        reference = load_reference_images(e.reference_path, self.params.resolution) \
            if e.reference_path else reference_fp
        real_stats = Stats.of(self.features(reference))

        def scores(x: torch.Tensor) -> dict:
            return {"fid": frechet(Stats.of(self.features(x.clamp(-1, 1))), real_stats),
                    "prompt_accuracy": None,
                    "clip_score": float(self.clip(x, prompts).mean()) if self.clip else None}
        return scores

    def heldout_errors(self) -> torch.Tensor:
        calib = self.calib
        if self.method == REFERENCE:  # the teacher against itself
            return torch.zeros(len(calib["probe_t"]))
        probe_v = load_tensors(paths.TEACHER_OUTPUTS)["probe_v"].float()
        pred = predict_points(self.model, calib["probe_x_t"], calib["probe_t"],
                              calib["probe_labels"])
        return (pred - probe_v).pow(2).flatten(1).mean(1)


class PipelineBackend:
    """The backend of ``kind: pipeline`` models (see the module docstring)."""

    def check_inputs(self, params: Params) -> None:
        check_inputs(params)

    def prompts(self, params: Params) -> list[str]:
        return read_prompts(params.prompts_path)

    def make_teacher(self, params: Params) -> tuple[torch.nn.Module, dict]:
        """The teacher is pretrained: point ``data/teacher`` at its pipeline folder."""
        transformer = load_transformer(params.model, params.model_path, params.allow_download)
        write_pipeline_pointer(paths.TEACHER, params.model, str(params.model_path))
        return transformer, {"outlier_fraction": 0.0, "outlier_factor": None,
                             "rescaled_channels": {}}

    def calibration_sets(self, params: Params) -> tuple[dict, dict, dict[str, str] | None]:
        """Training + probe points and the encoded prompts; validation points apart."""
        c = params.calibration
        pipe = load_pipeline(params.model, params.model_path, params.allow_download)
        pipe.to(resolve_device(params.device))
        family, prompts = model_family(params.model), read_prompts(params.prompts_path)
        log.info("%s (%s): %d prompts, %d + %d probe + %d validation points at %d px, "
                 "%d steps", params.model, family.name, len(prompts), c.num_samples,
                 params.train.probe_samples, c.validation_samples, params.resolution,
                 params.eval.steps)
        data, val = calibration_set(pipe, family, prompts, c.num_samples,
                                    params.train.probe_samples, c.validation_samples, c.seed,
                                    params.resolution, params.eval.steps,
                                    params.eval.guidance_scale)
        meta = {"model": params.model, "family": family.name,
                "resolution": str(params.resolution), "prompts": json.dumps(prompts)}
        return data, val, meta

    def teacher_outputs(self, params: Params, teacher: TextToImage,
                        calib: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Velocities at the training and the probe points, in bf16."""
        teacher.to(resolve_device(params.device))
        v = predict_points(teacher, calib["x_t"], calib["t"], calib["labels"])
        probe_v = predict_points(teacher, calib["probe_x_t"], calib["probe_t"],
                                 calib["probe_labels"])
        return {"v": v.bfloat16(), "probe_v": probe_v.bfloat16()}

    def training_data(self, params: Params) -> DistillData:
        """From the cache: the text encoders and VAE never load in training."""
        calib = load_calibration()
        outputs = load_tensors(paths.TEACHER_OUTPUTS, ("v", "probe_v"))
        return DistillData(calib["x_t"], calib["t"], calib["labels"], outputs["v"].float())

    def probe_set(self, params: Params, teacher: TextToImage) -> DistillData:
        """The calibration set's probe points (other noise draws), from the cache."""
        calib = load_calibration()
        outputs = load_tensors(paths.TEACHER_OUTPUTS, ("v", "probe_v"))
        return DistillData(calib["probe_x_t"], calib["probe_t"], calib["probe_labels"],
                           outputs["probe_v"].float())

    def validation_set(self, params: Params, teacher: TextToImage) -> DistillData:
        val = load_validation()
        return DistillData(val["x_t"], val["t"], val["labels"], predict_all(teacher, val))

    def teacher_description(self, params: Params) -> str:
        return params.model

    def probe_description(self, params: Params) -> str:
        return f"{params.model}'s own sampling trajectories from held-out noise draws."

    def evaluation_scope(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def evaluation(self, params: Params, method: str, seed: int) -> PipelineEvaluation:
        return PipelineEvaluation(params, method, seed)
