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
from pathlib import Path

import torch

from fraqat import distributed, paths
from fraqat.artifacts import load_calibration, load_split
from fraqat.checkpoint import fingerprint
from fraqat.flow import noisy, velocity
from fraqat.io import load_tensors, write_json
from fraqat.models import TextToImage, load_teacher, predict_all
from fraqat.modules import QuantConfig, layer_report, set_weight_bits
from fraqat.params import Params
from fraqat.runs import quantized_copy, save_run
from fraqat.schedule import make_schedule, steps_at_target
from fraqat.trainer import DistillData, TrainConfig, Trainer, calibrate

log = logging.getLogger(__name__)
SCHEDULE_OF = {"ptq": "constant", "qat": "constant", "qat-target-steps": "constant",
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
    student = quantized_copy(teacher, QuantConfig.from_params(params)).to(device)
    set_weight_bits(student.transformer, schedule.bits_at(0))
    n_calib = calibrate(student, data)
    log.info("%s seed %d: %d quantized layers, activations calibrated on %d batches",
             method, seed, len(layer_report(student.transformer)), n_calib)
    cfg = TrainConfig.from_params(
        t, steps=0 if method == "ptq" else schedule.total_steps, seed=seed,
        fingerprint=fingerprint({"params": params.model_dump(), "method": method, "seed": seed}))
    result = Trainer(student, data, schedule, cfg, checkpoint_dir, log_path, probe=probe).fit()
    return student.to("cpu"), result


def run(params: Params, method: str, seed: int) -> None:
    distributed.init_from_env()  # under torchrun: data-parallel over the ranks
    student, result = train_student(params, method, seed, paths.checkpoint_dir(method, seed),
                                    paths.train_log(method, seed))
    if not distributed.is_main():
        return
    result["world_size"] = distributed.world_size()
    meta = {"method": method, "seed": seed, "weight_bits": params.bits,
            "act_bits": params.act_bits, **result}
    save_run(paths.run_dir(method, seed), student, QuantConfig.from_params(params), meta)
    write_json(paths.train_metrics(method, seed), meta)
    ckpt = paths.checkpoint_dir(method, seed) / "checkpoint.pt"
    ckpt.unlink(missing_ok=True)  # the finished run now lives in data/runs
    log.info("%s seed %d: final loss %.5f, held-out loss at %g bits %.5f, %.1f s", method, seed,
             result["final_loss"], params.bits, result["final_target_loss"],
             result["wall_seconds"])
