"""Stage ``train --method M --seed S``: QAT of one run, or PTQ (calibration only); and
stage ``tune``: the same training on the validation split, once per learning rate of the grid.

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

import logging
import math
import tempfile
import time
from pathlib import Path

import torch

from fraqat import distributed, paths
from fraqat.checkpoint import fingerprint
from fraqat.errors import FraqatError
from fraqat.flow import noisy, velocity
from fraqat.io import load_tensors, read_json, write_json
from fraqat.models import TextToImage, load_teacher
from fraqat.modules import layer_report, set_weight_bits
from fraqat.params import Params, quant_config
from fraqat.runs import quantized_copy, save_run
from fraqat.schedule import (
    LRSchedule,
    first_target_step,
    make_lr_schedule,
    make_schedule,
    steps_at_target,
)
from fraqat.stability import stability
from fraqat.stages.pretrain import load_split
from fraqat.stages.teacher import load_calibration, predict_all
from fraqat.trainer import DistillData, TrainConfig, Trainer, calibrate

log = logging.getLogger(__name__)
SCHEDULE_OF = {"qat": "constant", "qat-warmup": "constant", "qat-target-steps": "constant",
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
    if probe is None:
        probe = probe_data(teacher, t.probe_samples)
    probe = probe.to(device)  # before the shared encoder moves
    lr = tuned_lr(params, method) if lr is None else lr
    data = distill_data().to(device)
    schedule = build_schedule(params, method)
    student = quantized_copy(teacher, quant_config(params)).to(device)
    set_weight_bits(student.transformer, params.bits if method == "ptq" else schedule.bits_at(0))
    n_calib = calibrate(student, data)
    log.info("%s seed %d: %d quantized layers, activations calibrated on %d batches",
             method, seed, len(layer_report(student.transformer)), n_calib)
    cfg = TrainConfig(steps=schedule.total_steps, lr=lr, batch_size=t.batch_size,
                      checkpoint_every=t.checkpoint_every, seed=seed,
                      lr_schedule=build_lr(params, method, lr),
                      flow_matching_weight=t.flow_matching_weight, probe_every=t.probe_every,
                      fingerprint=fingerprint({"params": params.model_dump(), "method": method,
                                               "seed": seed, "lr": lr}))
    trainer = Trainer(student, data, schedule, cfg, checkpoint_dir, log_path, probe=probe)
    if method != "ptq":
        result = trainer.fit()
        result.update(lr=lr, **stability([r["loss"] for r in trainer.rows]))
        return student.to("cpu"), result
    start = time.perf_counter()
    loss = trainer.loss_on(data, torch.arange(min(len(data), 512))).item()
    trainer.rows = [{"step": 0, "loss": round(loss, 7), "bits": params.bits, "lr": 0.0,
                     "target_loss": round(trainer.probe_loss(), 7)}]
    trainer.write_log()
    return student.to("cpu"), {"final_loss": trainer.rows[0]["loss"],
                     "final_target_loss": trainer.rows[0]["target_loss"], "steps": 0,
                     "resumed_from": 0, "wall_seconds": time.perf_counter() - start}


def run(params: Params, method: str, seed: int) -> None:
    distributed.init_from_env()  # under torchrun: data-parallel over the ranks
    student, result = train_student(params, method, seed, paths.checkpoint_dir(method, seed),
                                    paths.train_log(method, seed))
    if not distributed.is_main():
        return
    result["world_size"] = distributed.world_size()
    meta = {"method": method, "seed": seed, "weight_bits": params.bits,
            "act_bits": params.act_bits, **result}
    save_run(paths.run_dir(method, seed), student, quant_config(params), meta)
    write_json(paths.train_metrics(method, seed), meta)
    ckpt = paths.checkpoint_dir(method, seed) / "checkpoint.pt"
    ckpt.unlink(missing_ok=True)  # the finished run now lives in data/runs
    log.info("%s seed %d: final loss %.5f, held-out loss at %g bits %.5f, %.1f s", method, seed,
             result["final_loss"], params.bits, result["final_target_loss"],
             result["wall_seconds"])


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


def tune(params: Params) -> None:
    """Train every tuned method once per ``tune.lr_grid`` value (seed ``tune.seed``, budget
    ``tune.steps`` or ``train.steps``); keep the lr with the lowest validation loss at the
    target bits. Writes ``reports/tune.json`` only when every run has finished."""
    grid, methods = list(params.tune.lr_grid), tuned_methods(params)
    steps = params.tune.steps or params.train.steps
    tuned = params.model_copy(update={"train": params.train.model_copy(update={"steps": steps})})
    out: dict = {"grid": grid, "steps": steps, "seed": params.tune.seed,
                 "lr_schedule": params.train.lr_schedule,
                 "validation_samples": params.calibration.validation_samples,
                 "losses": {}, "stability": {}, "chosen": {}}
    if not grid:
        out["chosen"] = {m: params.train.lr for m in methods}
        write_json(paths.TUNE, out)
        return
    val = validation_data(load_teacher(paths.TEACHER))
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            losses, stab = {}, {}
            for lr in grid:
                _, result = train_student(tuned, method, params.tune.seed, Path(tmp) / "ckpt",
                                          Path(tmp) / "log.tsv", lr=lr, probe=val)
                losses[lr] = float(result["final_target_loss"])
                stab[lr] = {k: result[k] for k in ("max_spike", "diverged", "final_loss")}
                log.info("tune %s lr %g: validation loss %.5f (%.1f s)", method, lr,
                         losses[lr], result["wall_seconds"])
            out["losses"][method] = {f"{lr:g}": v for lr, v in losses.items()}
            out["stability"][method] = {f"{lr:g}": v for lr, v in stab.items()}
            out["chosen"][method] = choose_lr(losses)
            log.info("tune %s: lr %g", method, out["chosen"][method])
    write_json(paths.TUNE, out)
