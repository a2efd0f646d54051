"""Every stage computes on a fixed number of CPU threads, so its numbers do not depend on the
machine's core count.

A float sum's value depends on its order, and torch splits reductions (matmuls, norms) across
as many threads as it has, so a recipe rerun on another core count can drift apart over a few
hundred AdamW steps (most where the learning rate is high and the run is chaotic). Pinning
removes that source of noise instead of measuring it. A GPU stage keeps its device kernels;
this pins the host side only.
"""

from __future__ import annotations

import torch

STAGE_THREADS = 1


def pin_threads(n: int = STAGE_THREADS) -> None:
    """Set torch's intra-op threads to ``n`` (called once per stage, before any work)."""
    torch.set_num_threads(n)
