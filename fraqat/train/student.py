"""A method's recipe (:mod:`fraqat.methods`) made concrete, and the one function that trains
it, shared by the ``train`` and ``tune`` stages.

The recipe names the rules; this module applies them to ``params``: the bit schedule and its
final-fraction knob, the step budget, the warm-up and the learning-rate curve (a control takes
``schedule.control_of``'s). The peak learning rate is an argument: the stages pass the one
``tune`` chose (:func:`peak_lr` of ``reports/tune.json``'s choices) or a grid value.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch

from fraqat import methods, paths
from fraqat.artifacts import load_calibration, load_split
from fraqat.errors import FraqatError
from fraqat.io import load_tensors
from fraqat.models.rectified_flow import noisy, velocity
from fraqat.models.registry import TextToImage, load_teacher, predict_all
from fraqat.params import Params
from fraqat.quant.layers import QuantConfig, layer_report, set_weight_bits
from fraqat.schedule import (
    LRSchedule,
    first_target_step,
    make_lr_schedule,
    make_schedule,
    steps_at_target,
)
from fraqat.train import distributed
from fraqat.train.checkpoint import fingerprint
from fraqat.train.runs import quantized_copy
from fraqat.train.sharded_trainer import make_trainer
from fraqat.train.stability import stability
from fraqat.train.trainer import DistillData, TrainConfig, calibrate

log = logging.getLogger(__name__)


def train_steps(params: Params, method: str) -> int:
    if methods.get(method).steps == "mirrored-target":
        return steps_at_target(build_schedule(params, params.schedule.control_of))
    return params.train.steps


def build_schedule(params: Params, method: str):
    s, recipe = params.schedule, methods.get(method)
    name = s.fraqat_kind if recipe.schedule == "fractional" else recipe.schedule
    if name is None:
        raise ValueError(f"method {method!r} has no quantized student")
    return make_schedule(name, params.bits, train_steps(params, method), start=s.start_bits,
                         step=s.step, shape=s.shape, fp_warmup=s.fp_warmup,
                         final_fraction=getattr(s, recipe.final_fraction))


def tuned_methods(params: Params) -> list[str]:
    """The methods ``tune`` chooses a learning rate for (a mirrored lr's source included)."""
    wanted = list(params.methods)
    if any(methods.get(m).lr == "mirrored" for m in wanted):
        wanted.append(params.schedule.control_of)
    return [m for m in dict.fromkeys(wanted) if methods.get(m).lr == "tuned"]


def peak_lr(params: Params, method: str, chosen: Mapping[str, float]) -> float:
    """The peak learning rate of ``method`` given ``tune``'s ``chosen`` rates (untuned, or no
    grid: ``train.lr``); one line if ``tune`` has not chosen it."""
    recipe = methods.get(method)
    if not params.tune.lr_grid or recipe.lr == "untuned":
        return params.train.lr
    key = params.schedule.control_of if recipe.lr == "mirrored" else method
    if key not in chosen:
        raise FraqatError(f"no tuned learning rate for {key} in {paths.TUNE} "
                          "(run `dvc repro tune` first)")
    return chosen[key]


def build_lr(params: Params, method: str, lr: float) -> LRSchedule:
    """``train.lr_schedule`` at peak ``lr`` over the method's stages, with the recipe's
    warm-up; a mirrored-target control gets ``schedule.control_of``'s target-stage values."""
    t, recipe = params.train, methods.get(method)
    source = build_schedule(params, params.schedule.control_of)
    if recipe.steps == "mirrored-target":
        return make_lr_schedule(t.lr_schedule, lr, source, warmup=t.warmup_steps,
                                offset=first_target_step(source))
    own = build_schedule(params, method)
    extra = {"none": 0, "own-high-bits": first_target_step(own),
             "mirrored-high-bits": first_target_step(source)}[recipe.warmup]
    return make_lr_schedule(t.lr_schedule, lr, own, warmup=t.warmup_steps + extra)


def distill_data() -> DistillData:
    calib = load_calibration()
    v = load_tensors(paths.TEACHER_OUTPUTS, ("v",))["v"]
    return DistillData(calib["x_t"], calib["t"], calib["labels"], v,
                       target_v=velocity(calib["x0"], calib["noise"]))


def pipeline_distill_sets(calib: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]
                          ) -> tuple[DistillData, DistillData]:
    """(training, probe) sets of a real pipeline's cache (its probe points: other noise)."""
    train = DistillData(calib["x_t"], calib["t"], calib["labels"], outputs["v"].float())
    probe = DistillData(calib["probe_x_t"], calib["probe_t"], calib["probe_labels"],
                        outputs["probe_v"].float())
    return train, probe


def probe_data(teacher: TextToImage, n: int, seed: int = 4321) -> DistillData:
    """Held-out images, fixed noise and times, with the FP teacher's velocities."""
    held = load_split("heldout")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(held.labels), (n,), generator=g)
    x0, noise, t = held.images[idx], torch.randn(n, *held.images.shape[1:], generator=g), \
        torch.rand(n, generator=g)
    calib = {"x_t": noisy(x0, noise, t), "t": t, "labels": held.labels[idx]}
    return DistillData(calib["x_t"], t, calib["labels"], predict_all(teacher, calib))


def train_student(params: Params, method: str, seed: int, checkpoint_dir: Path,
                  log_path: Path, lr: float,
                  probe: DistillData | None = None) -> tuple[TextToImage, dict]:
    """Quantize the teacher, calibrate activations, run the method's schedule; no outputs.

    ``lr``: the peak learning rate (:func:`peak_lr`); ``probe``: where the loss at the
    target bits is measured (default: the held-out split). Trains on ``params.device``; the
    returned student is back on the CPU.
    """
    torch.manual_seed(seed)
    device = distributed.resolve_device(params.device)
    teacher = load_teacher(paths.TEACHER)
    t = params.train
    if params.model == "tiny-sana":
        cached_probe, data = None, distill_data()
    else:  # a real pipeline: both from the cache; its text encoders and VAE never load
        data, cached_probe = pipeline_distill_sets(load_calibration(),
                                                   load_tensors(paths.TEACHER_OUTPUTS,
                                                                ("v", "probe_v")))
    if probe is None:
        probe = cached_probe if cached_probe is not None else probe_data(teacher,
                                                                          t.probe_samples)
    probe = probe.to(device)  # before the shared encoder moves
    data = data.to(device)
    schedule = build_schedule(params, method)
    student = quantized_copy(teacher, QuantConfig.from_params(params)).to(device)
    set_weight_bits(student.transformer, schedule.bits_at(0))
    if t.gradient_checkpointing:
        cast(Any, student.transformer).enable_gradient_checkpointing()
    n_calib = calibrate(student, data)
    log.info("%s seed %d: %d quantized layers, activations calibrated on %d batches",
             method, seed, len(layer_report(student.transformer)), n_calib)
    trains = methods.get(method).trains
    cfg = TrainConfig.from_params(
        t, steps=schedule.total_steps if trains else 0, seed=seed,
        fingerprint=fingerprint({"params": params.model_dump(), "method": method, "seed": seed,
                                 "lr": lr}))
    cfg = dataclasses.replace(cfg, lr=lr, lr_schedule=build_lr(params, method, lr))
    trainer = make_trainer(student, data, schedule, cfg, checkpoint_dir, log_path, probe=probe)
    result = trainer.fit()
    if trains:
        result.update(lr=lr, **stability([r["loss"] for r in trainer.rows],
                                          [r["bits"] for r in trainer.rows]))
    return student.to("cpu"), result


def choose_lr(losses: dict[float, float]) -> float:
    """The learning rate with the lowest validation loss (non-finite losses never win; a tie
    goes to the smaller rate)."""
    finite = {lr: v for lr, v in losses.items() if math.isfinite(v)}
    if not finite:
        raise FraqatError(f"every learning rate of the grid diverged ({sorted(losses)}); "
                          "lower tune.lr_grid")
    return min(finite, key=lambda lr: (finite[lr], lr))


def validation_data(teacher: TextToImage) -> DistillData:
    """The validation triples (train images QAT never sees) with the teacher's velocities."""
    val = load_tensors(paths.VALIDATION, ("x_t", "t", "labels"))
    return DistillData(val["x_t"], val["t"], val["labels"], predict_all(teacher, val))
