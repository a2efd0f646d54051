"""Atomic, verifiable training checkpoints for exact resume.

Written to a temporary file and renamed, so a crash leaves the previous checkpoint intact.
A checkpoint records a fingerprint of the run's configuration; one from another
configuration is never resumed silently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from fraqat.checked import bad_file, load_torch
from fraqat.errors import BadFileError
from fraqat.io import atomic_path

FILENAME = "checkpoint.pt"
RESTART = "delete it to restart this run from step 0"


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(folder: Path, state: dict) -> Path:
    path = folder / FILENAME
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(folder: Path) -> dict | None:
    """The saved state, ``None`` if there is none; a corrupt file raises one clear line."""
    path = folder / FILENAME
    if not path.exists():
        return None
    return checked(load_torch(path, RESTART), path)


def corrupt(path: Path, why: str) -> BadFileError:
    """The one line for an unusable checkpoint (single-file or sharded)."""
    return bad_file(path, f"corrupt checkpoint ({why})", RESTART)


def checked(state: object, path: Path) -> dict:
    """``state`` if it has the keys a resume needs, else :func:`corrupt`."""
    if not isinstance(state, dict) or "step" not in state or "fingerprint" not in state:
        raise corrupt(path, "missing step/fingerprint")
    return state
