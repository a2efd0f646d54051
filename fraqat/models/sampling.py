"""Flow-matching sampling with diffusers' ``FlowMatchEulerDiscreteScheduler``.

Fixed noise seeds and a fixed scheduler make samples comparable across models: the same
prompt and noise through the teacher and a quantized student give the fidelity metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fraqat.models.rectified_flow import seeded_noise  # noqa: F401  (re-exported)
from fraqat.models.registry import TextToImage


@torch.no_grad()
def sample(model: TextToImage, prompts: Sequence[str], noise: torch.Tensor, steps: int,
           batch_size: int = 256) -> torch.Tensor:
    """Integrate dx/dt = v from t=1 (noise) to t=0 with ``steps`` Euler steps."""
    # imported here: the scheduler's module pulls in scipy.stats (~1 s), which the stages that
    # only train (and import this module through the backends) never use
    from diffusers import FlowMatchEulerDiscreteScheduler

    model.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        x = noise[i : i + batch_size].clone()
        hidden, mask = model.encode(list(prompts[i : i + batch_size]))
        scheduler: Any = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            tt = torch.full((x.shape[0],), float(t) / 1000.0, device=x.device)
            v = model.predict(x, tt, hidden, mask)
            x = scheduler.step(v, t, x).prev_sample
        out.append(x)
    return torch.cat(out)
