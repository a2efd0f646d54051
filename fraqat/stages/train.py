"""Stage ``train --method M --seed S``: QAT of one run, or PTQ (calibration only).

* ``ptq``              round-to-nearest W{bits}A{act_bits} of the teacher, activations calibrated,
                       zero training steps: the floor every QAT must beat.
* ``qat``              standard QAT: the target bits from the first step.
* ``fraqat``           FraQAT: 8 -> 7.5 -> ... -> bits (``schedule.*``).
* ``int-progressive``  integer steps only: 8 -> 7 -> ... -> bits (ablation).
* ``qat-target-steps`` the control: standard QAT given only the steps FraQAT spends at the
                       target bits (is the high-bit part of FraQAT worth its steps?).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from fraqat import distributed, paths
from fraqat.checkpoint import fingerprint
from fraqat.flow import noisy, velocity
from fraqat.io import load_tensors, write_json
from fraqat.models import TextToImage, load_teacher
from fraqat.modules import layer_report, set_weight_bits
from fraqat.params import Params, quant_config
from fraqat.runs import quantized_copy, save_run
from fraqat.schedule import make_schedule, steps_at_target
from fraqat.stages.pretrain import load_split
from fraqat.stages.teacher import load_calibration, predict_all
from fraqat.trainer import DistillData, TrainConfig, Trainer, calibrate

log = logging.getLogger(__name__)
SCHEDULE_OF = {"qat": "constant", "qat-target-steps": "constant",
               "int-progressive": "int-progressive"}


def train_steps(params: Params, method: str) -> int:
    if method == "qat-target-steps":
        return steps_at_target(build_schedule(params, "fraqat"))
    return params.train.steps


def build_schedule(params: Params, method: str):
    s, name = params.schedule, SCHEDULE_OF.get(method, params.schedule.fraqat_kind)
    return make_schedule(name, params.bits, train_steps(params, method), start=s.start_bits,
                         step=s.step, shape=s.shape, fp_warmup=s.fp_warmup,
                         final_fraction=s.final_fraction)


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
                  log_path: Path) -> tuple[TextToImage, dict]:
    """Quantize the teacher, calibrate activations, run the method's schedule; no outputs.

    Trains on ``params.device``; the returned student is back on the CPU.
    """
    torch.manual_seed(seed)
    device = distributed.resolve_device(params.device)
    teacher = load_teacher(paths.TEACHER)
    t = params.train
    probe = probe_data(teacher, t.probe_samples).to(device)  # before the shared encoder moves
    data = distill_data().to(device)
    schedule = build_schedule(params, method)
    student = quantized_copy(teacher, quant_config(params)).to(device)
    set_weight_bits(student.transformer, params.bits if method == "ptq" else schedule.bits_at(0))
    n_calib = calibrate(student, data)
    log.info("%s seed %d: %d quantized layers, activations calibrated on %d batches",
             method, seed, len(layer_report(student.transformer)), n_calib)
    cfg = TrainConfig(steps=schedule.total_steps, lr=t.lr, batch_size=t.batch_size,
                      checkpoint_every=t.checkpoint_every, seed=seed,
                      lr_schedule=t.lr_schedule, lr_restart_per_stage=t.lr_restart_per_stage,
                      flow_matching_weight=t.flow_matching_weight, probe_every=t.probe_every,
                      warmup=t.warmup_steps, cuda_graphs=t.cuda_graphs, autocast=t.autocast,
                      fingerprint=fingerprint({"params": params.model_dump(), "method": method,
                                               "seed": seed}))
    trainer = Trainer(student, data, schedule, cfg, checkpoint_dir, log_path, probe=probe)
    if method != "ptq":
        result = trainer.fit()
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
