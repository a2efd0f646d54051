"""Calibration data of a real pipeline: points on its own sampling trajectory.

Distillation needs inputs the transformer actually sees at inference. Rather than re-deriving
each family's scheduler (shifts, FLUX's resolution-dependent ``mu``, PixArt's DPM-Solver), the
pipeline's own ``__call__`` runs from seeded noise and a forward hook records every
transformer call: latents ``x`` (unpacked to (B, C, h, w)) and ``t`` in [0, 1]. With
classifier-free guidance the call holds [uncond; cond] copies of the same latents; the last B
rows are kept. ``eval.steps`` scheduler steps per trajectory give that many points per prompt
and noise draw.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from tqdm import tqdm

from fraqat.families import Family, latent_shape, pack, t_of_timestep, to_unpacked


@contextmanager
def recorded_calls(transformer: torch.nn.Module) -> Iterator[list[dict]]:
    """Every forward call of ``transformer`` as a dict of its bound arguments (and output)."""
    calls: list[dict] = []
    signature = inspect.signature(transformer.forward)

    def hook(module, args, kwargs, out):
        bound = signature.bind(*args, **kwargs).arguments
        first = out[0] if isinstance(out, tuple) else out.sample
        calls.append({**bound, "output": first.detach().clone()})

    handle = transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def call_options(family: Family, resolution: int, steps: int, guidance: float | None) -> dict:
    """``__call__`` keywords shared by calibration and evaluation (same trajectory)."""
    opts: dict = {"height": resolution, "width": resolution, "num_inference_steps": steps}
    if guidance is not None:
        opts["guidance_scale"] = guidance
    if family.name in ("sana", "pixart"):  # their binning would resize off-table resolutions
        opts["use_resolution_binning"] = False
    return opts


def initial_latents(pipe, family: Family, shape: tuple[int, int, int], seeds: Sequence[int]
                    ) -> torch.Tensor:
    """Seeded starting noise, one generator per image (in the pipeline's input layout)."""
    x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
                     for s in seeds])
    return pack(x) if family.name == "flux" else x


@torch.no_grad()
def trajectory_points(pipe, family: Family, prompts: Sequence[str], seeds: Sequence[int],
                      resolution: int, steps: int, guidance: float | None,
                      batch_size: int = 8) -> dict[str, torch.Tensor]:
    """x (N, C, h, w), t (N,), prompt (N,) index into ``prompts``: ``steps`` points for each
    (prompt, seed) pair, seed ``seeds[i]`` for prompt ``i``."""
    shape = latent_shape(pipe, family, resolution)
    opts = call_options(family, resolution, steps, guidance)
    xs, ts, idx = [], [], []
    for i in tqdm(range(0, len(prompts), batch_size), desc="trajectories", unit="batch"):
        batch = list(prompts[i : i + batch_size])
        latents = initial_latents(pipe, family, shape, seeds[i : i + batch_size])
        with recorded_calls(pipe.transformer) as calls:
            pipe(batch, latents=latents, output_type="latent", **opts)
        for call in calls:
            hidden = call["hidden_states"][-len(batch):]
            xs.append(to_unpacked(family, hidden, shape).float())
            ts.append(t_of_timestep(family, pipe.transformer, call["timestep"][-len(batch):]))
            idx.append(torch.arange(i, i + len(batch)))
    return {"x_t": torch.cat(xs), "t": torch.cat(ts), "labels": torch.cat(idx)}
