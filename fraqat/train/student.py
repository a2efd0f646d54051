"""Each method's recipe (bit schedule, learning rate, controls) and the one function that
trains it, shared by the ``train`` and ``tune`` stages.

* ``ptq``              round-to-nearest W{bits}A{act_bits} of the teacher, activations calibrated,
                       zero training steps: the floor every QAT must beat.
* ``qat``              standard QAT: the target bits from the first step.
* ``qat-warmup``       the implicit-warm-up control: standard QAT whose learning rate ramps up
                       linearly over as many steps as ``schedule.control_of`` spends above the
                       target bits (on top of ``train.warmup_steps``).
* ``fraqat``           FraQAT: 8 -> 7.5 -> ... -> bits (``schedule.*``; the paper's equal stages).
* ``fraqat-late``      the same levels with ``schedule.late_final_fraction`` of the steps at the
                       target bits (the best fractional schedule of the ablation).
* ``int-progressive``  integer steps only: 8 -> 7 -> ... -> bits (ablation).
* ``qat-target-steps`` the target-steps control: standard QAT given only the steps
                       ``schedule.control_of`` spends at the target bits, with the *same
                       learning-rate values* its target stage gets (is the high-bit part worth
                       its steps, the schedule held fixed?).

Every method's peak learning rate is the one ``tune`` chose for it on the validation split
(``reports/tune.json``); the controls take their fractional method's.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, cast

import torch

from fraqat import paths
from fraqat.artifacts import load_calibration, load_split
from fraqat.errors import FraqatError
from fraqat.io import load_tensors, read_json
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
SCHEDULE_OF = {"ptq": "constant", "qat": "constant", "qat-warmup": "constant",
               "qat-target-steps": "constant",
               "int-progressive": "int-progressive"}
UNTUNED = ("ptq", "qat-target-steps")  # no training / the lr of schedule.control_of


def train_steps(params: Params, method: str) -> int:
    if method == "qat-target-steps":
        return steps_at_target(build_schedule(params, params.schedule.control_of))
    return params.train.steps


def build_schedule(params: Params, method: str):
    s, name = params.schedule, SCHEDULE_OF.get(method, params.schedule.fraqat_kind)
    final = s.late_final_fraction if method == "fraqat-late" else s.final_fraction
    return make_schedule(name, params.bits, train_steps(params, method), start=s.start_bits,
                         step=s.step, shape=s.shape, fp_warmup=s.fp_warmup,
                         final_fraction=final)


def tuned_methods(params: Params) -> list[str]:
    """The methods ``tune`` chooses a learning rate for (the control's source included)."""
    wanted = list(params.methods)
    if "qat-target-steps" in wanted:
        wanted.append(params.schedule.control_of)
    return [m for m in dict.fromkeys(wanted) if m not in UNTUNED]


def tuned_lr(params: Params, method: str) -> float:
    """The peak learning rate of ``method``: chosen by ``tune``, or ``train.lr`` untuned."""
    key = params.schedule.control_of if method == "qat-target-steps" else method
    if not params.tune.lr_grid or method == "ptq":
        return params.train.lr
    chosen = read_json(paths.TUNE)["chosen"] if paths.TUNE.exists() else {}
    if key not in chosen:
        raise FraqatError(f"no tuned learning rate for {key} in {paths.TUNE} "
                          "(run `dvc repro tune` first)")
    return chosen[key]


def build_lr(params: Params, method: str, lr: float) -> LRSchedule:
    """``train.lr_schedule`` at peak ``lr`` over the method's stages; the controls (module
    docstring) take their warm-up / their lr values from ``schedule.control_of``."""
    t = params.train
    source = build_schedule(params, params.schedule.control_of)
    if method == "qat-target-steps":
        return make_lr_schedule(t.lr_schedule, lr, source, warmup=t.warmup_steps,
                                offset=first_target_step(source))
    warmup = t.warmup_steps + (first_target_step(source) if method == "qat-warmup" else 0)
    return make_lr_schedule(t.lr_schedule, lr, build_schedule(params, method), warmup=warmup)


def distill_data() -> DistillData:
    calib = load_calibration()
    v = load_tensors(paths.TEACHER_OUTPUTS)["v"]
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
                  log_path: Path, lr: float | None = None,
                  probe: DistillData | None = None) -> tuple[TextToImage, dict]:
    """Quantize the teacher, calibrate activations, run the method's schedule; no outputs.

    ``lr``: the peak learning rate (default: the tuned one); ``probe``: where the loss at the
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
                                                   load_tensors(paths.TEACHER_OUTPUTS))
    if probe is None:
        probe = cached_probe if cached_probe is not None else probe_data(teacher,
                                                                          t.probe_samples)
    probe = probe.to(device)  # before the shared encoder moves
    lr = tuned_lr(params, method) if lr is None else lr
    data = data.to(device)
    schedule = build_schedule(params, method)
    student = quantized_copy(teacher, QuantConfig.from_params(params)).to(device)
    set_weight_bits(student.transformer, schedule.bits_at(0))
    if t.gradient_checkpointing:
        cast(Any, student.transformer).enable_gradient_checkpointing()
    n_calib = calibrate(student, data)
    log.info("%s seed %d: %d quantized layers, activations calibrated on %d batches",
             method, seed, len(layer_report(student.transformer)), n_calib)
    cfg = TrainConfig.from_params(
        t, steps=0 if method == "ptq" else schedule.total_steps, seed=seed,
        fingerprint=fingerprint({"params": params.model_dump(), "method": method, "seed": seed,
                                 "lr": lr}))
    cfg = dataclasses.replace(cfg, lr=lr, lr_schedule=build_lr(params, method, lr))
    trainer = make_trainer(student, data, schedule, cfg, checkpoint_dir, log_path, probe=probe)
    result = trainer.fit()
    if method != "ptq":
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
    if not paths.VALIDATION.exists():
        raise FraqatError(f"no validation set at {paths.VALIDATION} "
                          "(run `dvc repro calibrate` first)")
    val = load_tensors(paths.VALIDATION)
    return DistillData(val["x_t"], val["t"], val["labels"], predict_all(teacher, val))
