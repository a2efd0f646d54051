"""Rectified-flow (flow-matching) training math, as in Sana/SD3/FLUX.

``x_t = (1 - t) x0 + t noise`` and the model learns ``v = noise - x0``; sampling integrates
``dx/dt = v`` from t=1 to t=0 (see :mod:`fraqat.models.sampling`).
"""

from __future__ import annotations

import torch


def noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1.0 - t) * x0 + t * noise


def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def sample_times(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logit-normal times (SD3's default): more weight on the middle of the path."""
    return torch.sigmoid(torch.randn(n, generator=generator))


def seeded_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The starting noise of sampling: a fixed draw per seed, identical for every model."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g)


def cosine_lr(step: int, total: int, base: float, warmup: int = 0) -> float:
    """Linear warm-up then cosine decay to 0: base * 0.5 * (1 + cos(pi * progress))."""
    import math

    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
