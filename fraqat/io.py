"""Atomic file writes: a stage either leaves a complete output or none (never a partial one).

The read side (``load_tensors``, ``read_json``, ``read_metadata``) is :mod:`fraqat.checked`'s,
re-exported here: a bad file is one line there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from fraqat.checked import load_tensors, read_json, read_metadata, shard_name

__all__ = ["atomic_path", "load_tensors", "read_json", "read_metadata", "save_tensors",
           "write_json", "write_text"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only on success.

    Works for files and folders (write into the yielded path as if it were ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        for done in [tmp] if tmp.is_file() else [p for p in tmp.rglob("*") if p.is_file()]:
            with open(done, "rb") as f:  # on disk before the rename: a crash leaves the old
                os.fsync(f.fileno())    # output or the new one
        os.chmod(tmp, 0o755 if tmp.is_dir() else 0o644)  # mkdtemp's 0700 is too private
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif tmp.is_dir() and (path.is_file() or path.is_symlink()):
            path.unlink()  # a file becoming a folder (tensors that now shard)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


SHARD_BYTES = 2 * 2**30  # larger tensor files are written as row shards


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None,
                 shard_bytes: int = SHARD_BYTES) -> None:
    """One safetensors file, or, past ``shard_bytes``, a folder of the same name holding
    ``k`` files ``shard-i-of-k.safetensors``: every tensor cut along its first dim into ``k``
    row blocks (0-dim ones in shard 0), each shard with the metadata. Why rows, not
    keys (as diffusers' ``max_shard_size`` does): a calibration set at 1024 px is one
    multi-GB ``encoder_hidden_states`` tensor, which key sharding would leave whole."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    total = sum(v.numel() * v.element_size() for v in cpu.values())
    with atomic_path(path) as tmp:
        if total <= shard_bytes:
            save_file(cpu, str(tmp), metadata=metadata)
            return
        k = -(-total // shard_bytes)
        tmp.mkdir()
        pieces = {name: (v.tensor_split(k) if v.dim() else (v,)) for name, v in cpu.items()}
        for i in range(k):
            shard = {name: p[i].contiguous() for name, p in pieces.items() if i < len(p)}
            save_file(shard, str(tmp / shard_name(i, k)), metadata=metadata)
