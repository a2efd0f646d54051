"""Multi-GPU QAT: DDP scaling of the trainer's own step, and FSDP steps of large DiTs.

One torchrun launch per (mode, world size) writes one JSON; ``table`` merges them into one
table and one JSON naming the device (commands: ``benchmarks/MULTI_GPU.md``)::

    torchrun --nproc-per-node N -m benchmarks.multi_gpu ddp --json $OUT/ddp-N.json
    torchrun --nproc-per-node 4 -m benchmarks.multi_gpu fsdp --model flux-schnell \
        [--checkpointing] --json $OUT/fsdp-flux.json
    python -m benchmarks.multi_gpu table $OUT/*.json --json $OUT/multi_gpu.json

ddp: :class:`fraqat.train.trainer.Trainer` itself (its ``fit``: batch slicing, DDP, the loss
all-reduce, AdamW) on the Sana-600M config (random init, bf16 autocast, 300 masked caption
tokens) at a fixed per-GPU batch, full precision vs W4A8 (per-tensor 4-bit weights, INT8
activations calibrated on one batch). Step time = interval between optimizer steps (the
trainer reads the loss every step, so each interval ends synchronised); median of the steps
after warm-up, with min/max. Then a few steps at a fixed *global* batch, whose losses the
table compares with one GPU's (the same trajectory up to reduction order).

fsdp: the model built with parameters on the meta device, W4A8 fake-quant swapped in,
``fully_shard`` per block (:mod:`fraqat.train.sharding`: bf16 all-gather/compute, fp32 reduce), then
each rank's shard materialised at random (the whole model is never on one GPU); activation
ranges are set to [-8, 8] (no calibration data: timings do not depend on them). One AdamW
step of the MSE to a random target, with or without activation checkpointing.

``--tiny`` runs toy configs on the CPU (gloo): a check of the plumbing, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from benchmarks.configs import SANA_600M
from benchmarks.timing import meta, write_json
from fraqat.data import PROMPTS
from fraqat.models.registry import TextToImage
from fraqat.models.text_encoder import PromptEncoder
from fraqat.quant.activations import ActQuantizer
from fraqat.quant.core import grid_tensor
from fraqat.quant.layers import QuantConfig, quant_layers, quantize_model
from fraqat.schedule import make_schedule
from fraqat.train import distributed, sharding
from fraqat.train.trainer import DistillData, TrainConfig, Trainer, calibrate

GIB = 2**30
SANA_1600M = dict(SANA_600M, num_attention_heads=70, num_layers=20, cross_attention_dim=2240,
                  cross_attention_head_dim=112, num_cross_attention_heads=20)
SANA_TINY = dict(SANA_600M, attention_head_dim=8, num_attention_heads=4, num_layers=2,
                 cross_attention_dim=32, cross_attention_head_dim=8,
                 num_cross_attention_heads=4, caption_channels=64, sample_size=8)
FLUX_SCHNELL = dict(num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                    in_channels=64, guidance_embeds=False)
FLUX_TINY = dict(FLUX_SCHNELL, num_layers=1, num_single_layers=2, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
                 axes_dims_rope=(4, 6, 6))
SD35_MEDIUM = dict(attention_head_dim=64, num_attention_heads=24, num_layers=24,
                   caption_projection_dim=1536, joint_attention_dim=4096,
                   pooled_projection_dim=2048, in_channels=16, out_channels=16, patch_size=2,
                   sample_size=128, pos_embed_max_size=384, qk_norm="rms_norm",
                   dual_attention_layers=tuple(range(13)))
SD35_TINY = dict(SD35_MEDIUM, attention_head_dim=8, num_attention_heads=2, num_layers=2,
                 caption_projection_dim=16, joint_attention_dim=32, pooled_projection_dim=16,
                 sample_size=8, pos_embed_max_size=16, dual_attention_layers=(0,))
# model -> (diffusers class, config, tiny config, latent (C, H, W) or image tokens, text tokens)
MODELS = {
    "sana-600m": ("SanaTransformer2DModel", SANA_600M, SANA_TINY, (32, 32, 32), 300),
    "sana-1.6b": ("SanaTransformer2DModel", SANA_1600M, SANA_TINY, (32, 32, 32), 300),
    "sd3.5-medium": ("SD3Transformer2DModel", SD35_MEDIUM, SD35_TINY, (16, 128, 128), 333),
    "flux-schnell": ("FluxTransformer2DModel", FLUX_SCHNELL, FLUX_TINY, 4096, 256),
}


def setup(tiny: bool) -> torch.device:
    os.environ.setdefault("WORLD_SIZE", "1")
    if int(os.environ["WORLD_SIZE"]) > 1:
        backend = "nccl" if torch.cuda.is_available() and not tiny else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=3))
    if tiny or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def build(name: str, tiny: bool) -> torch.nn.Module:
    import diffusers

    cls, cfg, tiny_cfg, _, _ = MODELS[name]
    return getattr(diffusers, cls)(**(tiny_cfg if tiny else cfg))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", torch.bfloat16)


def peak_gib(device: torch.device) -> list[float]:
    """Peak allocated memory of every rank (CUDA), gathered on all ranks."""
    mine = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else 0.0
    out = [mine] * distributed.world_size()
    if dist.is_initialized():
        dist.all_gather_object(out, mine)
    return out


def summary(times_ms: list[float]) -> dict:
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms),
            "max_ms": max(times_ms), "n": len(times_ms)}


# --- ddp: the trainer's own step ------------------------------------------------------------


def trainer_config(**kw) -> TrainConfig:
    """Fields the installed TrainConfig has (eager steps everywhere: DDP cannot graph-replay)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in {**kw, "cuda_graphs": "off"}.items() if k in names})


def run_trainer(args, device: torch.device, quant: bool, steps: int, global_batch: int,
                lr: float) -> tuple[list[float], list[float], list[float]]:
    """Train ``steps`` steps with :class:`Trainer`: (step times ms, losses, peak GiB/rank)."""
    _, cfg, tiny_cfg, shape, tokens = MODELS["sana-600m"]
    torch.manual_seed(0)  # identical init on every rank, built on the CPU
    encoder = PromptEncoder.from_prompts(PROMPTS, dim=(tiny_cfg if args.tiny else cfg)[
        "caption_channels"], max_len=8 if args.tiny else tokens)
    shape = (32, 8, 8) if args.tiny else shape
    student = TextToImage(build("sana-600m", args.tiny), encoder, shape)
    g = torch.Generator().manual_seed(1)
    n = 64
    data = DistillData(torch.randn(n, *shape, generator=g), torch.rand(n, generator=g),
                       torch.randint(0, len(PROMPTS), (n,), generator=g),
                       torch.randn(n, *shape, generator=g)).to(device)
    student.to(device)
    if quant:
        quantize_model(student.transformer, QuantConfig(weight_bits=4, act_bits=8))
        with autocast(device):
            calibrate(student, data, batch_size=8, num_batches=1)  # the same on every rank
    cfg = trainer_config(steps=steps, lr=lr, batch_size=global_batch, checkpoint_every=10**9,
                         seed=0, lr_schedule="constant", probe_every=10**9)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(student, data, make_schedule("constant", 4.0, steps), cfg,
                          Path(tmp) / "ckpt", Path(tmp) / f"log{distributed.rank()}.tsv")

        def stamp(*_):
            sync(device)
            stamps.append(time.perf_counter())

        trainer.opt.register_step_post_hook(stamp)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        stamps.append(time.perf_counter())
        with autocast(device):
            trainer.fit()
    times = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:], strict=False)]
    losses = [float(r["loss"]) for r in trainer.rows]
    peak = peak_gib(device)
    del trainer, student, data
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return times, losses, peak


def bench_ddp(args, device: torch.device) -> dict:
    world = distributed.world_size()
    rows = []
    for quant in (False, True):
        times, _, peak = run_trainer(args, device, quant, args.warmup + args.steps,
                                     args.batch * world, lr=1e-5)
        rows.append({"variant": "w4a8" if quant else "fp", "gpus": world,
                     "batch_per_gpu": args.batch, "peak_gib": peak,
                     **summary(times[args.warmup:])})
    _, losses, _ = run_trainer(args, device, True, args.traj_steps, args.traj_batch, lr=1e-4)
    return {"mode": "ddp", "model": "sana-600m", "gpus": world, "rows": rows,
            "trajectory": {"global_batch": args.traj_batch, "losses": losses}}


# --- fsdp: large models, sharded from the meta device ---------------------------------------


def inputs(name: str, model: torch.nn.Module, batch: int, tiny: bool, device: torch.device,
           image_tokens: int | None = None) -> dict:
    """Random forward kwargs of ``model`` at the benchmark's sequence lengths (FLUX: 4096
    image tokens = 1024 px, 1024 = 512 px; 256 text tokens as FLUX.1-schnell's pipeline)."""
    _, _, _, latent, text = MODELS[name]
    cfg, g = model.config, torch.Generator().manual_seed(2)
    text = 8 if tiny else text
    if name == "flux-schnell":
        tokens = 16 if tiny else image_tokens or latent
        kw = dict(hidden_states=torch.randn(batch, tokens, cfg.in_channels, generator=g),
                  encoder_hidden_states=torch.randn(batch, text, cfg.joint_attention_dim,
                                                    generator=g),
                  pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=g),
                  timestep=torch.rand(batch, generator=g), img_ids=torch.zeros(tokens, 3),
                  txt_ids=torch.zeros(text, 3))
    else:
        shape = (latent[0], 8, 8) if tiny else latent
        kw = dict(hidden_states=torch.randn(batch, *shape, generator=g),
                  timestep=torch.rand(batch, generator=g) * 1000)
        if name == "sd3.5-medium":
            kw.update(encoder_hidden_states=torch.randn(batch, text, cfg.joint_attention_dim,
                                                        generator=g),
                      pooled_projections=torch.randn(batch, cfg.pooled_projection_dim,
                                                     generator=g))
        else:
            kw.update(encoder_hidden_states=torch.randn(batch, text, cfg.caption_channels,
                                                        generator=g))
    return {k: v.to(device) for k, v in kw.items()}


@torch.no_grad()
def quantizer_state(model: torch.nn.Module) -> None:
    """Values of the quantizers' buffers, made on the meta device by the swap: each layer's
    bit grid, and activation ranges [-8, 8] frozen into INT8 scales (no calibration data)."""
    for _, layer in quant_layers(model):
        layer.weight_grid.copy_(grid_tensor(layer.effective_bits, layer.symmetric))
    for q in model.modules():
        if isinstance(q, ActQuantizer):
            q.min_val.fill_(-8.0)
            q.max_val.fill_(8.0)
            q.freeze()


def bench_fsdp(args, device: torch.device) -> dict:
    world = distributed.world_size()
    torch.manual_seed(0)
    with sharding.meta_parameters():
        model = build(args.model, args.tiny)
        if not args.fp:
            quantize_model(model, QuantConfig(weight_bits=4, act_bits=8))
    n_params = sum(p.numel() for p in model.parameters())
    if args.checkpointing:
        model.enable_gradient_checkpointing()
    sharding.shard(model, sharding.device_mesh(device))
    sharding.materialize(model, device)
    quantizer_state(model)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    kw = inputs(args.model, model, args.batch, args.tiny, device, args.image_tokens)
    target = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        with autocast(device):
            out = model(**kw).sample
        target = torch.zeros_like(out, dtype=torch.float32) if target is None else target
        loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= args.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    row = {"model": args.model, "params": n_params, "gpus": world, "batch_per_gpu": args.batch,
           "quant": "fp" if args.fp else "w4a8", "checkpointing": args.checkpointing,
           "tokens": {k: list(v.shape) for k, v in kw.items() if v.dim() > 1},
           "loss": loss.item(), "peak_gib": peak_gib(device), **summary(times)}
    return {"mode": "fsdp", "model": args.model, "gpus": world, "rows": [row]}


# --- the table ------------------------------------------------------------------------------


def table(paths: list[Path]) -> dict:
    runs = [json.loads(p.read_text()) for p in paths if p.suffix == ".json"]
    runs = [r for r in runs if r.get("mode") in ("ddp", "fsdp")]
    ddp = sorted((r for r in runs if r["mode"] == "ddp"), key=lambda r: r["gpus"])
    one = {row["variant"]: row for r in ddp if r["gpus"] == 1 for row in r["rows"]}
    ref_losses = next((r["trajectory"]["losses"] for r in ddp if r["gpus"] == 1), None)
    head = ("| DDP (Sana-600M) | GPUs | batch/GPU | step ms median [min, max] | steps/s | "
            "scaling × (eff.) | peak GiB/GPU | loss vs 1 GPU (max rel.) |")
    lines = [head, "|---" * 8 + "|"] if ddp else []
    out_rows = []
    for r in ddp:
        rel = None
        if ref_losses is not None:
            rel = max(abs(a - b) / max(abs(a), 1e-12)
                      for a, b in zip(ref_losses, r["trajectory"]["losses"], strict=True))
        for row in r["rows"]:
            base = one.get(row["variant"])
            speed = (row["gpus"] * base["median_ms"] / row["median_ms"]) if base else None
            row = {**row, "speedup": speed, "efficiency": speed / row["gpus"] if speed else None,
                   "trajectory_max_rel_diff": rel}
            out_rows.append({"mode": "ddp", **row})
            lines.append(
                f"| {row['variant']} | {row['gpus']} | {row['batch_per_gpu']} | "
                f"{row['median_ms']:.1f} [{row['min_ms']:.1f}, {row['max_ms']:.1f}] | "
                f"{1e3 / row['median_ms']:.2f} | "
                + (f"{speed:.2f} ({100 * speed / row['gpus']:.0f} %)" if speed else "-")
                + f" | {max(row['peak_gib']):.1f} | " + ("-" if rel is None else f"{rel:.1e}")
                + " |")
    fsdp = [r for r in runs if r["mode"] == "fsdp"]
    head = ("| FSDP model | params | GPUs | W/A | act. ckpt | inputs | step ms median "
            "[min, max] | peak GiB/GPU (max) |")
    lines += ["", head, "|---" * 8 + "|"] if fsdp else []
    for r in fsdp:
        for row in r["rows"]:
            out_rows.append({"mode": "fsdp", **row})
            shapes = ", ".join("x".join(map(str, s)) for s in row["tokens"].values())
            lines.append(f"| {row['model']} | {row['params'] / 1e9:.3f} B | {row['gpus']} | "
                         f"{row['quant']} | {'on' if row['checkpointing'] else 'off'} | "
                         f"{shapes} | {row['median_ms']:.1f} [{row['min_ms']:.1f}, "
                         f"{row['max_ms']:.1f}] | {max(row['peak_gib']):.1f} |")
    text = "\n".join(lines).strip()
    print(text)
    devices = sorted({r["device"] for r in runs})
    return {"device": devices, "torch": sorted({r["torch"] for r in runs}), "rows": out_rows,
            "table": text}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("ddp", "fsdp", "table"))
    ap.add_argument("inputs", nargs="*", type=Path, help="table: the per-launch JSON files")
    ap.add_argument("--model", choices=tuple(MODELS), default="flux-schnell")
    ap.add_argument("--batch", type=int, default=None, help="per GPU (ddp 8, fsdp 1)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--traj-steps", type=int, default=5)
    ap.add_argument("--traj-batch", type=int, default=8, help="global batch of the trajectory")
    ap.add_argument("--checkpointing", action="store_true", help="fsdp: activation checkpoints")
    ap.add_argument("--image-tokens", type=int, default=None, help="fsdp flux: default 4096")
    ap.add_argument("--fp", action="store_true", help="fsdp: full precision instead of W4A8")
    ap.add_argument("--tiny", action="store_true", help="toy configs on the CPU (gloo)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.mode == "table":
        result = table(args.inputs)
    else:
        args.batch = args.batch or (8 if args.mode == "ddp" else 1)
        device = setup(args.tiny)
        result = (bench_ddp if args.mode == "ddp" else bench_fsdp)(args, device)
        result.update(meta())
        result["device"] = (f"{distributed.world_size()}x {result['device']}"
                            if device.type == "cuda" else
                            f"cpu ({distributed.world_size()} gloo processes)")
        rank = distributed.rank()
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        if rank != 0:
            return
        print(json.dumps(result["rows"], indent=1))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
