"""Progressive QAT by distillation: one loop for FraQAT, standard QAT and their ablations.

Every method shares the student init (the FP teacher), the calibration data, the loss, the
optimizer, the learning-rate schedule and the number of steps; only the weight bit schedule
differs (:mod:`fraqat.schedule`). Loss at step k with bits b_k::

    L = || f_{b_k}(x_t, t, c) - v_teacher ||^2  +  w_fm || f_{b_k}(x_t, t, c) - (noise - x0) ||^2

Batches are a pure function of (seed, step), and checkpoints hold the model, optimizer and
step, so a killed run resumes to the same final weights as an uninterrupted one (CPU).
On CUDA the forward + backward is replayed from a CUDA graph (:mod:`fraqat.train.step`) and
runs under bf16 autocast unless ``train.cuda_graphs`` / ``train.autocast`` say otherwise.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fraqat.data import PROMPTS
from fraqat.errors import FraqatError
from fraqat.io import atomic_path
from fraqat.models.registry import TextToImage
from fraqat.quant.layers import (
    calibrate_activations,
    forward_signature,
    quant_layers,
    set_weight_bits,
    weight_bits,
)
from fraqat.schedule import LRSchedule, Schedule, make_lr_schedule
from fraqat.train import distributed
from fraqat.train.checkpoint import load_checkpoint, save_checkpoint
from fraqat.train.step import StepRunner

if TYPE_CHECKING:
    from fraqat.params import TrainParams

log = logging.getLogger(__name__)
LOG_COLUMNS = ("step", "loss", "bits", "lr", "target_loss")
FP_BITS = 32.0  # how full-precision weights appear in the numeric log


@dataclass
class TrainConfig:
    steps: int
    lr: float
    batch_size: int
    checkpoint_every: int
    seed: int
    lr_schedule: str | LRSchedule = "cosine"
    flow_matching_weight: float = 0.0
    probe_every: int = 50
    warmup_steps: int = 0
    fingerprint: str = ""
    cuda_graphs: str = "auto"  # auto | on | off (fraqat.train.step)
    autocast: str = "auto"  # auto (bf16 on CUDA, off on the CPU) | bf16 | off
    parallel: str = "ddp"  # ddp | fsdp (fraqat.train.sharded_trainer)

    @classmethod
    def from_params(cls, train: TrainParams, *, steps: int, seed: int,
                    fingerprint: str = "") -> TrainConfig:
        """The loop's settings from the validated ``train:`` params (same field names)."""
        same = {f.name: getattr(train, f.name) for f in fields(cls) if f.name in
                type(train).model_fields and f.name != "steps"}
        return cls(steps=steps, seed=seed, fingerprint=fingerprint, **same)


AUTOCAST = ("auto", "bf16", "off")


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.autocast`` on ``device`` (None: full precision)."""
    if name not in AUTOCAST:
        raise ValueError(f"autocast={name!r} is not allowed (allowed: {', '.join(AUTOCAST)})")
    if name == "bf16" or (name == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@dataclass
class DistillData:
    """Calibration inputs with cached teacher velocities (all tensors share dim 0)."""

    x_t: torch.Tensor
    t: torch.Tensor
    labels: torch.Tensor
    teacher_v: torch.Tensor
    target_v: torch.Tensor | None = None  # noise - x0, for the optional flow-matching term

    def __len__(self) -> int:
        return len(self.t)

    def to(self, device: torch.device | str) -> DistillData:
        target = None if self.target_v is None else self.target_v.to(device)
        return DistillData(self.x_t.to(device), self.t.to(device), self.labels.to(device),
                           self.teacher_v.to(device), target)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The batch of ``step``: a pure function of (seed, step), so resume needs no RNG state."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n, (batch_size,), generator=g)


def learning_rate(cfg: TrainConfig, schedule: Schedule, step: int) -> float:
    """``cfg.lr_schedule`` is an :class:`~fraqat.schedule.LRSchedule` or a shape's name."""
    lr = cfg.lr_schedule
    if isinstance(lr, str):
        lr = make_lr_schedule(lr, cfg.lr, schedule, warmup=cfg.warmup_steps)
    return lr.lr_at(step)


class Trainer:
    """Runs one (method, seed): the student must already be quantized and calibrated."""

    def __init__(self, student: TextToImage, data: DistillData, schedule: Schedule,
                 cfg: TrainConfig,
                 checkpoint_dir: Path, log_path: Path, probe: DistillData | None = None):
        self.student, self.data, self.schedule, self.cfg = student, data, schedule, cfg
        self.checkpoint_dir, self.log_path, self.probe = checkpoint_dir, log_path, probe
        if student.encoder is not None:
            student.encoder.requires_grad_(False)
        self.params = [p for p in student.transformer.parameters() if p.requires_grad]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0,
                                     fused=self.device.type == "cuda" or None)
        self.autocast_dtype = autocast_dtype(cfg.autocast, self.device)
        self.runner: StepRunner | None = None  # built by fit(), after a DDP wrap
        self._layers = [layer for _, layer in quant_layers(student.transformer)]
        self._bits: object = ()  # bits last set on the model (set only on change)
        self.last_good = 0
        self.rows: list[dict] = []
        with torch.no_grad():  # the encoder is frozen: encode the prompt set once
            self._cond = student.prompt_conditioning(list(PROMPTS))

    def loss_on(self, data: DistillData, idx: torch.Tensor) -> torch.Tensor:
        pred = self.student.predict(data.x_t[idx], data.t[idx], *self.cond_batch(data.labels[idx]))
        loss = torch.nn.functional.mse_loss(pred, data.teacher_v[idx])
        if self.cfg.flow_matching_weight and data.target_v is not None:
            fm = torch.nn.functional.mse_loss(pred, data.target_v[idx])
            loss = loss + self.cfg.flow_matching_weight * fm
        return loss

    def cond_batch(self, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(c[labels] for c in self._cond)

    @torch.no_grad()
    def probe_loss(self) -> float:
        """Distillation loss on held-out data at the *target* bits (what deployment sees)."""
        if self.probe is None:
            return float("nan")
        target = self.schedule.target
        with weight_bits(self._module(), target), self._autocast():
            return self.loss_on(self.probe, torch.arange(len(self.probe))).item()

    def _autocast(self):
        return (torch.autocast(self.device.type, self.autocast_dtype)
                if self.autocast_dtype else torch.autocast(self.device.type, enabled=False))

    def _module(self) -> torch.nn.Module:
        tr = self.student.transformer
        return tr.module if isinstance(tr, DistributedDataParallel) else tr

    def _state(self, step: int) -> dict:
        return {"step": step, "fingerprint": self.cfg.fingerprint, "rows": self.rows,
                "model": self._module().state_dict(),
                "optimizer": self.opt.state_dict()}

    def _resume(self) -> int:
        state = load_checkpoint(self.checkpoint_dir)
        if state is None:
            return 0
        if state["fingerprint"] != self.cfg.fingerprint:
            log.warning("checkpoint in %s is from another configuration: starting from step 0 "
                        "(it is replaced at the next checkpoint)", self.checkpoint_dir)
            return 0
        self.student.transformer.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.rows = state["rows"]
        log.info("resumed from %s at step %d", self.checkpoint_dir, state["step"])
        return state["step"]

    def _wrap(self, tr: torch.nn.Module) -> torch.nn.Module:
        """Same init on every rank; DDP averages gradients."""
        return DistributedDataParallel(tr) if distributed.world_size() > 1 else tr

    def _save_checkpoint(self, step: int) -> None:
        if distributed.is_main():
            save_checkpoint(self.checkpoint_dir, self._state(step))
        distributed.barrier()

    def write_log(self) -> None:
        with atomic_path(self.log_path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, LOG_COLUMNS, delimiter="\t", lineterminator="\n")
            w.writeheader()
            w.writerows(self.rows)

    def build_runner(self) -> StepRunner:
        """The forward + backward of one step, eager or CUDA-graphed (see train_step)."""
        self.runner = StepRunner(lambda idx: self.loss_on(self.data, idx), self.params,
                                 self.device, self.cfg.cuda_graphs, self.autocast_dtype,
                                 distributed=distributed.world_size() > 1)  # DDP or FSDP
        return self.runner

    def train_step(self, step: int) -> tuple[torch.Tensor, float | None, float]:
        """One optimizer step at ``step``: returns (loss on the device, bits, learning rate).

        The loss is checked before the update: a non-finite loss stops with the last good
        checkpoint kept, the weights untouched.
        """
        bits = self.schedule.bits_at(step)
        if bits != self._bits:  # a copy into every layer's grid: only when it changes
            set_weight_bits(self._module(), bits)
            self._bits = bits
        lr = learning_rate(self.cfg, self.schedule, step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        idx = distributed.shard(batch_indices(len(self.data), self.cfg.batch_size, self.cfg.seed,
                                              step))
        runner = self.runner or self.build_runner()
        loss = runner.forward_backward(idx, key=forward_signature(self._layers))
        if not math.isfinite(loss.item()):
            raise FraqatError(f"non-finite loss ({loss.item()}) at step {step} "
                              f"(bits={bits}, lr={lr:.3g}); stopped, the last good "
                              f"checkpoint (step {self.last_good}) is kept in "
                              f"{self.checkpoint_dir}")
        self.opt.step()
        return loss, bits, lr

    def fit(self) -> dict:
        """Train ``cfg.steps`` steps (resuming if a checkpoint matches); 0 steps is PTQ.

        With 0 steps nothing is updated: the log holds one row, the loss on the first
        calibration points and the held-out probe at the target bits, the round-to-nearest
        floor every trained method starts from.
        """
        if self.cfg.steps == 0:
            return self._evaluate_only()
        cfg, tr = self.cfg, self.student.transformer
        start = self._resume()
        tr.train()
        self.student.transformer = self._wrap(tr)
        self.build_runner()
        t0 = time.perf_counter()
        bar = tqdm(range(start, cfg.steps), desc="train", initial=start, total=cfg.steps,
                   mininterval=2, disable=not distributed.is_main())
        self.last_good = start
        for step in bar:
            loss, bits, lr = self.train_step(step)
            loss = distributed.mean_across_ranks(loss)
            row = {"step": step, "loss": round(loss.item(), 7),
                   "bits": FP_BITS if bits is None else bits, "lr": lr, "target_loss": ""}
            if step % cfg.probe_every == 0 or step == cfg.steps - 1:
                row["target_loss"] = round(self.probe_loss(), 7)
            self.rows.append(row)
            bar.set_postfix(bits=row["bits"], loss=f"{loss.item():.4f}", refresh=False)
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                self._save_checkpoint(step + 1)
                self.last_good = step + 1
        if self.runner is not None:
            self.runner.release()
        self._bits = ()
        self.student.transformer = tr  # unwrap DDP
        set_weight_bits(tr, self.schedule.bits_at(cfg.steps - 1))
        tr.eval()
        if distributed.is_main():
            self.write_log()
        tail = [r["loss"] for r in self.rows[-max(1, cfg.steps // 20):]]
        return {"final_loss": sum(tail) / len(tail),
                "final_target_loss": self.rows[-1]["target_loss"], "steps": cfg.steps,
                "resumed_from": start, "wall_seconds": time.perf_counter() - t0}

    @torch.no_grad()
    def _evaluate_only(self) -> dict:
        t0 = time.perf_counter()
        target = self.schedule.target
        set_weight_bits(self.student.transformer, target)
        loss = self.loss_on(self.data, torch.arange(min(len(self.data), 512))).item()
        self.rows = [{"step": 0, "loss": round(loss, 7), "bits": target, "lr": 0.0,
                      "target_loss": round(self.probe_loss(), 7)}]
        if distributed.is_main():
            self.write_log()
        return {"final_loss": self.rows[0]["loss"],
                "final_target_loss": self.rows[0]["target_loss"], "steps": 0,
                "resumed_from": 0, "wall_seconds": time.perf_counter() - t0}


def calibrate(student: TextToImage, data: DistillData, batch_size: int = 256,
              num_batches: int = 4) -> int:
    """Observe activation ranges on the first calibration batches, then freeze them."""
    with torch.no_grad():
        cond_all = student.prompt_conditioning(list(PROMPTS))

    def forward(model, sl):
        labels = data.labels[sl]
        student.predict(data.x_t[sl], data.t[sl], *(c[labels] for c in cond_all))

    slices = [slice(i * batch_size, (i + 1) * batch_size) for i in range(num_batches)
              if i * batch_size < len(data)]
    return calibrate_activations(student.transformer, slices, forward)
