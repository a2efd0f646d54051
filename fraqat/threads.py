"""Every stage computes on a fixed number of CPU threads, so its numbers do not depend on the
machine's core count.

A float sum's value depends on its order, and torch splits reductions (matmuls, norms) across
as many threads as it has: the same recipe rerun with 1 and 2 threads ends a few percent apart
after a few hundred AdamW steps, as large as the effects being measured. One thread is also
what the tiny default runs fastest on (its tensors are too small to split); a GPU stage
keeps its device kernels, this only pins the host side.
"""

from __future__ import annotations

import torch

STAGE_THREADS = 1


def pin_threads(n: int = STAGE_THREADS) -> None:
    """Set torch's intra-op threads to ``n`` (called once per stage, before any work)."""
    torch.set_num_threads(n)
