"""Training memory and step time of each paper model's transformer at full size, on one GPU.

    python -m benchmarks.paper_profiles --json $OUT/paper-profiles.json [--tiny] [--models ...]

Each family's transformer is built on the GPU from its full config with random weights (fp32
master weights, as ``fraqat train`` keeps them), swapped to W4A8 fake-quant (per-tensor
4-bit weights, INT8 activations with frozen ranges: the timings do not depend on them), and
trained for a few steps on random inputs at 1024 px: bf16 autocast, MSE to a random target,
fused AdamW. Variants per model: batch 1 and 2, gradient checkpointing off and on, timed in
alternating rounds (the model is shared, so a drifting clock moves them alike). A variant
that runs out of memory is recorded as such (its bytes needed are then the plan's estimate).

The plan (:mod:`fraqat.plan`) reads from this file, per model: the static bytes per
parameter (16 with AdamW, 8 where only forward + backward fit), the activation bytes per
sample (the slope of peak memory from batch 1 to 2) with and without checkpointing, and the
step seconds per sample. FLUX.1-schnell's 11.9 B parameters need 190 GB for fp32 weights,
gradients and AdamW's moments: more than one H200, so it runs forward + backward without the
optimizer (``optimizer: false`` in its rows).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.configs import PIXART_SIGMA
from benchmarks.multi_gpu import MODELS, inputs, quantizer_state
from benchmarks.timing import meta, write_json
from fraqat.quant.layers import QuantConfig, quantize_model

GIB = 2**30
PIXART_TINY = dict(PIXART_SIGMA, num_layers=2, attention_head_dim=8, num_attention_heads=2,
                   cross_attention_dim=16, caption_channels=32, sample_size=8)
FAMILIES = {**MODELS, "pixart-sigma": ("PixArtTransformer2DModel", PIXART_SIGMA, PIXART_TINY,
                                       (4, 128, 128), 300)}
ORDER = ("sana-600m", "pixart-sigma", "sana-1.6b", "sd3.5-medium", "flux-schnell")
NO_OPTIMIZER = {"flux-schnell"}  # fp32 AdamW state alone exceeds one GPU


def build(name: str, tiny: bool, device: torch.device) -> torch.nn.Module:
    import diffusers

    cls, cfg, tiny_cfg, _, _ = FAMILIES[name]
    torch.manual_seed(0)
    with device:
        model = getattr(diffusers, cls)(**(tiny_cfg if tiny else cfg))
    quantize_model(model, QuantConfig(weight_bits=4, act_bits=8))
    quantizer_state(model)
    return model.train()


def model_inputs(name: str, model: torch.nn.Module, batch: int, tiny: bool,
                 device: torch.device) -> dict:
    if name != "pixart-sigma":
        return inputs(name, model, batch, tiny, device)
    latent, text = FAMILIES[name][3], FAMILIES[name][4]
    shape = (latent[0], 8, 8) if tiny else latent
    g = torch.Generator().manual_seed(2)
    kw = dict(hidden_states=torch.randn(batch, *shape, generator=g),
              encoder_hidden_states=torch.randn(batch, 8 if tiny else text,
                                                model.config.caption_channels, generator=g),
              timestep=torch.rand(batch, generator=g) * 1000)
    return {**{k: v.to(device) for k, v in kw.items()},
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


def step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer | None, kw: dict,
            device: torch.device):
    target: list[torch.Tensor] = []

    def step() -> float:
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            out = model(**kw).sample
        if not target:
            target.append(torch.randn_like(out, dtype=torch.float32))
        loss = torch.nn.functional.mse_loss(out.float(), target[0])
        loss.backward()
        if opt is not None:
            opt.step()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def set_checkpointing(model: torch.nn.Module, on: bool) -> None:
    (model.enable_gradient_checkpointing if on else model.disable_gradient_checkpointing)()


def measure(name: str, tiny: bool, device: torch.device, rounds: int, warmup: int,
            progress: Callable[[dict], None] = lambda _: None) -> dict:
    """Every variant of one model: peak GiB while it warmed up, step times in rounds.
    Checkpointing on first: a variant that breaks the CUDA context (a kernel failing for
    lack of memory can) then comes after the ones that fit; ``progress`` gets the partial
    result after each variant."""
    cuda = device.type == "cuda"
    model = build(name, tiny, device)
    n = sum(p.numel() for p in model.parameters())
    use_opt = name not in NO_OPTIMIZER or tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=cuda or None) if use_opt else None
    variants = [(b, gc_on) for gc_on in (True, False) for b in (1, 2)]
    rows: dict[tuple[int, bool], dict] = {}
    steps: dict[tuple[int, bool], object] = {}
    for b, gc_on in variants:
        row = rows[(b, gc_on)] = {"batch": b, "checkpointing": gc_on, "optimizer": use_opt}
        try:
            set_checkpointing(model, gc_on)
            kw = model_inputs(name, model, b, tiny, device)
            step = step_fn(model, opt, kw, device)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            for _ in range(warmup):
                row["loss"] = step()
            row["peak_gib"] = torch.cuda.max_memory_allocated() / GIB if cuda else None
            row["times_ms"] = []
            steps[(b, gc_on)] = step
        except torch.OutOfMemoryError:
            row["error"] = "out of memory"
            model.zero_grad(set_to_none=True)
        except Exception as exc:  # recorded, the other variants still run
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            traceback.print_exc()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        progress({"model": name, "params": n, "static_bytes_per_param": 16 if use_opt else 8,
                  "rows": list(rows.values()), "complete": False})
    for r in range(rounds):
        keys = list(steps)
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            set_checkpointing(model, key[1])
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            steps[key]()  # the loss read synchronises
            rows[key]["times_ms"].append((time.perf_counter() - t0) * 1e3)
    for row in rows.values():
        if row.get("times_ms"):
            row["median_ms"] = statistics.median(row["times_ms"])
    del model, opt, steps
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {"model": name, "params": n, "static_bytes_per_param": 16 if use_opt else 8,
            "rows": list(rows.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true", help="toy configs on the CPU (plumbing)")
    ap.add_argument("--models", nargs="*", default=list(ORDER))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    out = {**meta(), "resolution": 1024, "tiny": args.tiny, "models": []}
    for name in args.models:
        t0 = time.perf_counter()
        def partial(res: dict) -> None:
            write_json(args.json, {**out, "models": [*out["models"], res]})

        try:
            res = measure(name, args.tiny, device, args.rounds, args.warmup, partial)
        except torch.OutOfMemoryError:
            res = {"model": name, "error": "out of memory while building"}
        res["wall_s"] = time.perf_counter() - t0
        out["models"].append(res)
        print(name, {k: v for k, v in res.items() if k != "rows"}, flush=True)
        for row in res.get("rows", []):
            print("   ", {k: v for k, v in row.items() if k != "times_ms"}, flush=True)
        write_json(args.json, out)  # after each model: a timeout keeps what finished


if __name__ == "__main__":
    main()
