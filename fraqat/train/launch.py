"""One command for a multi-GPU stage: ``train.processes: N`` restarts it under torchrun.

A user, DVC or the Prefect flow runs ``fraqat train …`` (or ``tune``) as always; with N > 1
and no torchrun around it, the command runs itself again as ``torchrun --standalone
--nproc-per-node N`` (PyTorch's own launcher) and exits with its status, so DDP or FSDP
(``train.parallel``) need no second command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence


def launched() -> bool:
    """True inside a torchrun rank (torchrun sets WORLD_SIZE for every rank it starts)."""
    return "WORLD_SIZE" in os.environ


def torchrun_command(processes: int, argv: Sequence[str]) -> list[str]:
    """``fraqat <argv>`` as torchrun's one-node command line with ``processes`` ranks."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(processes), "-m", "fraqat.cli", *argv]


def relaunch(processes: int, argv: Sequence[str]) -> int:
    """Run ``fraqat <argv>`` under torchrun; its exit status (0 when every rank finished)."""
    return subprocess.run(torchrun_command(processes, argv), check=False).returncode
