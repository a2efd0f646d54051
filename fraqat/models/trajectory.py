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

from fraqat.models.families import Family, latent_shape, pack, t_of_timestep, to_unpacked


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
def trajectory_points(pipe, family: Family, prompts: Sequence[str], prompt_ids: Sequence[int],
                      seeds: Sequence[int], resolution: int, steps: int,
                      guidance: float | None, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """``steps`` points (x_t (N, C, h, w), t (N,), labels (N,)) of each trajectory k: prompt
    ``prompts[prompt_ids[k]]`` from the noise of ``seeds[k]``."""
    shape = latent_shape(pipe, family, resolution)
    opts = call_options(family, resolution, steps, guidance)
    xs, ts, idx = [], [], []
    for i in tqdm(range(0, len(seeds), batch_size), desc="trajectories", unit="batch"):
        ids = [int(j) for j in prompt_ids[i : i + batch_size]]
        latents = initial_latents(pipe, family, shape, seeds[i : i + batch_size])
        with recorded_calls(pipe.transformer) as calls:
            pipe([prompts[j] for j in ids], latents=latents, output_type="latent", **opts)
        for call in calls:
            hidden = call["hidden_states"][-len(ids):]
            xs.append(to_unpacked(family, hidden, shape).float())
            ts.append(t_of_timestep(family, pipe.transformer, call["timestep"][-len(ids):]))
            idx.append(torch.tensor(ids))
    return {"x_t": torch.cat(xs), "t": torch.cat(ts), "labels": torch.cat(idx)}


def draw(pipe, family: Family, prompts: Sequence[str], n: int, seed: int, resolution: int,
         steps: int, guidance: float | None) -> dict[str, torch.Tensor]:
    """``n`` trajectory points: ceil(n / steps) trajectories over the prompts in turn, noise
    seed ``seed + k`` for trajectory k, then a seeded subset of exactly ``n`` points."""
    trajectories = -(-n // steps)
    ids = [k % len(prompts) for k in range(trajectories)]
    seeds = [seed + k for k in range(trajectories)]
    points = trajectory_points(pipe, family, prompts, ids, seeds, resolution, steps, guidance)
    keep = torch.randperm(len(points["t"]), generator=torch.Generator().manual_seed(seed))[:n]
    keep = keep.sort().values
    return {k: v[keep] for k, v in points.items()}


STREAM = 1_000_003  # noise seeds of the training, probe and validation draws lie this far apart


def calibration_set(pipe, family: Family, prompts: Sequence[str], num_samples: int,
                    probe_samples: int, validation_samples: int, seed: int, resolution: int,
                    steps: int, guidance: float | None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(calibration, validation): training points, held-out probe points (other noise, same
    prompts) and the encoded prompts (``cond.<key>``) in one dict; validation points (a third
    noise stream, read only by ``tune``) in the other."""
    from fraqat.models.families import encode_prompts

    base = seed * 3 * STREAM
    train, probe, val = (draw(pipe, family, prompts, n, base + k * STREAM, resolution, steps,
                              guidance)
                         for k, n in enumerate((num_samples, probe_samples, validation_samples)))
    cond = encode_prompts(pipe, family, prompts, guidance)
    return ({**train, **{f"probe_{k}": v for k, v in probe.items()},
             **{f"cond.{k}": v for k, v in zip(family.cond_keys, cond, strict=True)}}, val)


@torch.no_grad()
def predict_points(model, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                   batch_size: int = 64) -> torch.Tensor:
    """``model``'s predictions at stored points, conditioned on its prompt table by label."""
    table = model.prompt_conditioning([])
    device = next(model.transformer.parameters()).device
    out = []
    for i in tqdm(range(0, len(t), batch_size), desc="predict", unit="batch", mininterval=2):
        sl = slice(i, i + batch_size)
        lab = labels[sl].to(table[0].device)
        out.append(model.predict(x_t[sl].to(device), t[sl].to(device),
                                 *(c[lab].to(device) for c in table)).float().cpu())
    return torch.cat(out)

