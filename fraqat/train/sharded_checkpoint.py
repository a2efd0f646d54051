"""Sharded training checkpoints through ``torch.distributed.checkpoint`` (DCP), for FSDP runs.

Every rank writes its own shards of the model and of the AdamW state (no rank ever holds the
full state, which for a 12 B model is 192 GB); DCP's ``.metadata`` maps them back on load, also
to another world size.

Layout of a checkpoint folder::

    dcp-<step>/          DCP's files (one per rank + .metadata) and meta.json (step,
                         fingerprint, log rows: what resume needs besides tensors)

Atomic, as :mod:`fraqat.train.checkpoint`: all ranks write into ``.dcp-<step>.tmp``; after a
barrier rank 0 adds ``meta.json`` and renames the folder to ``dcp-<step>`` (one rename: a
folder has its final name only when complete), then deletes older ``dcp-*`` folders. A crash
at any point leaves the previous complete checkpoint, which :func:`latest` finds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.optim import Optimizer

from fraqat.checked import read_json, reading
from fraqat.train.checkpoint import checked

PATTERN = re.compile(r"dcp-(\d+)")
META = "meta.json"


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def latest(folder: Path) -> Path | None:
    """The complete checkpoint with the highest step in ``folder``, or ``None``."""
    found = [(int(m.group(1)), p) for p in folder.glob("dcp-*")
             if (m := PATTERN.fullmatch(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def read_meta(path: Path) -> dict:
    return checked(read_json(path / META, todo=_restart(path)), path)


def _restart(path: Path) -> str:
    return f"delete {path} to resume from an earlier checkpoint or step 0"


def save(folder: Path, meta: dict, model: nn.Module, optimizer: Optimizer) -> Path:
    """Write ``dcp-<meta['step']>`` on every rank (a collective); returns its path."""
    final = folder / f"dcp-{meta['step']}"
    tmp = folder / f".{final.name}.tmp"
    if _is_main():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while writing
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
    _barrier()  # every rank's shards are on disk
    if _is_main():
        (tmp / META).write_text(json.dumps(meta))
        with open(tmp / META, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        for old in folder.glob("dcp-*"):
            if old != final and PATTERN.fullmatch(old.name):
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load(path: Path, model: nn.Module, optimizer: Optimizer) -> None:
    """Load ``path`` into the (sharded) ``model`` and ``optimizer`` in place (a collective)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optim": optim_state}
    with reading(path, "sharded checkpoint", _restart(path)):  # a shard missing or cut short
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])


def remove(folder: Path) -> None:
    """Delete every checkpoint in ``folder`` (the finished run lives elsewhere)."""
    if _is_main():
        for path in folder.glob("*dcp-*"):
            shutil.rmtree(path, ignore_errors=True)
