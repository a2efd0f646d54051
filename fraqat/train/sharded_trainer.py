"""The trainer under FSDP (``train.parallel: fsdp``): same loop, sharded state and checkpoints.

Differences from :class:`fraqat.train.trainer.Trainer` (DDP), and only these:

* the student's transformer is sharded with :func:`fraqat.train.sharding.shard` *before* the
  optimizer is built (AdamW must hold the sharded parameters, so its moments are sharded too);
* checkpoints go through :mod:`fraqat.train.sharded_checkpoint` (every rank writes its shards; same
  atomicity, fingerprint check and exact resume as the one-file checkpoint);
* after training, the full weights are gathered back into a plain module
  (:func:`fraqat.train.sharding.gather`), so the stage saves and evaluates it as after DDP.

Batches are split over ranks as under DDP and FSDP averages gradients over ranks, so a
sharded run equals the one-process run for the same global batch (tested on CPU with gloo).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from fraqat.models.registry import TextToImage
from fraqat.schedule import Schedule
from fraqat.train import distributed, sharded_checkpoint, sharding
from fraqat.train.trainer import DistillData, TrainConfig, Trainer

log = logging.getLogger(__name__)


class ShardedTrainer(Trainer):
    def __init__(self, student: TextToImage, data: DistillData, schedule: Schedule,
                 cfg: TrainConfig, checkpoint_dir: Path, log_path: Path,
                 probe: DistillData | None = None):
        tr = student.transformer
        device = next(tr.parameters()).device
        self._plain = sharding.meta_copy(tr)  # filled with the trained weights by fit()
        sharding.shard(tr, sharding.device_mesh(device))
        super().__init__(student, data, schedule, cfg, checkpoint_dir, log_path, probe)

    def _wrap(self, tr: torch.nn.Module) -> torch.nn.Module:
        return tr  # already sharded in place

    def _save_checkpoint(self, step: int) -> None:
        meta = {"step": step, "fingerprint": self.cfg.fingerprint, "rows": self.rows}
        sharded_checkpoint.save(self.checkpoint_dir, meta, self.student.transformer, self.opt)

    def _resume(self) -> int:
        path = sharded_checkpoint.latest(self.checkpoint_dir)
        if path is None:
            return 0
        meta = sharded_checkpoint.read_meta(path)
        if meta["fingerprint"] != self.cfg.fingerprint:
            log.warning("checkpoint in %s is from another configuration: starting from step 0 "
                        "(it is replaced at the next checkpoint)", self.checkpoint_dir)
            return 0
        sharded_checkpoint.load(path, self.student.transformer, self.opt)
        self.rows = meta["rows"]
        log.info("resumed from %s at step %d", path, meta["step"])
        return meta["step"]

    def fit(self) -> dict:
        result = super().fit()
        self.student.transformer = sharding.gather(self.student.transformer, self._plain)
        distributed.barrier()
        sharded_checkpoint.remove(self.checkpoint_dir)  # the trained weights are complete
        return result


def make_trainer(student: TextToImage, data: DistillData, schedule: Schedule, cfg: TrainConfig,
                 checkpoint_dir: Path, log_path: Path,
                 probe: DistillData | None = None) -> Trainer:
    """The trainer ``cfg.parallel`` names: DDP or FSDP; one process needs neither."""
    sharded = sharding.check_parallel(cfg.parallel) == "fsdp" and distributed.world_size() > 1
    cls = ShardedTrainer if sharded else Trainer
    return cls(student, data, schedule, cfg, checkpoint_dir, log_path, probe=probe)
