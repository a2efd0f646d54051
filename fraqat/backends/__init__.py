"""One backend per kind of model, chosen in one place: :func:`backend_of`.

A model's kind is data (:data:`fraqat.models.registry.REGISTRY`): ``embedded`` for the default
trained in-project on the digits, ``pipeline`` for a diffusers pipeline folder. The stages
run one code path each and ask the backend for what differs: the teacher, the calibration
and validation sets, the teacher outputs, the distillation and probe sets, the prompts,
generation and scores, and what the report calls the probe.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

import torch

from fraqat.backends.embedded import EmbeddedBackend
from fraqat.backends.pipeline import PipelineBackend
from fraqat.errors import ParamsError
from fraqat.models.registry import REGISTRY, TextToImage
from fraqat.params import Params
from fraqat.train.trainer import DistillData


class Evaluation(Protocol):
    """One model under test, loaded the way its kind runs it (``fraqat evaluate``)."""

    model: TextToImage
    weight_bits: float | None
    act_bits: float | None
    fields: dict             # result fields of this kind (feature space, FID reference, ...)
    sample_metadata: dict[str, str]

    def generate(self, prompts: list[str], desc: str) -> torch.Tensor:
        """Samples of ``prompts`` from the evaluation's fixed noise, in stored precision."""

    def scorer(self, reference_fp: torch.Tensor, prompts: list[str], labels: torch.Tensor
               ) -> Callable[[torch.Tensor], dict]:
        """Scores (FID, prompt accuracy, ...) of clipped images of ``prompts``."""

    def heldout_errors(self) -> torch.Tensor:
        """Per-item squared velocity errors to the teacher on points training never saw."""


class Backend(Protocol):
    def check_inputs(self, params: Params) -> None:
        """One line and exit code 2 for a bad input, before any stage works."""

    def prompts(self, params: Params) -> list[str]:
        """The prompt list that labels index."""

    def make_teacher(self, params: Params) -> tuple[torch.nn.Module, dict]:
        """Write ``data/teacher``; its transformer and the outlier fields of the report."""

    def calibration_sets(self, params: Params) -> tuple[dict, dict, dict[str, str] | None]:
        """(calibration, validation, file metadata)."""

    def teacher_outputs(self, params: Params, teacher: TextToImage,
                        calib: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The teacher's cached predictions on the calibration set."""

    def training_data(self, params: Params) -> DistillData:
        """QAT's training points with the cached teacher outputs."""

    def probe_set(self, params: Params, teacher: TextToImage) -> DistillData:
        """Points training never sees, with the teacher's outputs (the training probe)."""

    def validation_set(self, params: Params, teacher: TextToImage) -> DistillData:
        """The validation points ``tune`` scores learning rates on."""

    def probe_description(self, params: Params) -> str:
        """What the held-out loss is measured on, for the report."""

    def teacher_description(self, params: Params) -> str:
        """The teacher a verdict may speak for, for the report."""

    def evaluation_scope(self) -> AbstractContextManager:
        """The context evaluation runs in (thread settings)."""

    def evaluation(self, params: Params, method: str, seed: int) -> Evaluation:
        """The model ``method``/``seed`` loaded for evaluation."""


BACKENDS: dict[str, Backend] = {"embedded": EmbeddedBackend(), "pipeline": PipelineBackend()}


def backend_of(params: Params) -> Backend:
    """The backend of ``params.model``'s kind."""
    if params.model not in REGISTRY:
        raise ParamsError(f"params.yaml: model: {params.model!r} is not known "
                          f"(allowed: {', '.join(REGISTRY)})")
    return BACKENDS[REGISTRY[params.model].kind]
