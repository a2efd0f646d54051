"""Time of ``fraqat train``'s own step (``Trainer.train_step``) on a real-size DiT, FP vs W4A8.

    python -m benchmarks.train_step --json out.json [--model sana|flux] [--modes eager,graph]

The student is diffusers' SanaTransformer2DModel at the Sana-600M configuration (random init;
or FLUX.1's transformer reduced to 2 double + 4 single blocks) inside the trainer exactly as
``fraqat train`` builds it: AdamW, MSE distillation to cached teacher velocities, bf16
autocast, batch 8 (FLUX: 2). Variants: full precision ("fp"), fraqat W4A8 (fractional-bit
weights through the fused ops, INT8 activations calibrated on one batch) and, where the
package is installed, torchao's QAT. Modes: "eager" (``train.cuda_graphs: off``), "graph"
(the default on CUDA: forward + backward replayed from a CUDA graph) and "compile" (the
transformer under ``torch.compile``, eager runner). Each step is timed on the host from call
to return with the GPU synchronized (the trainer reads every loss), medians over repeats with
their spread; peak memory from ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import tempfile
import traceback
from pathlib import Path

import torch
from torch import nn

from benchmarks.configs import SANA_600M
from benchmarks.timing import first_line, meta, spread, sync, wall_ms, write_json
from fraqat.data import PROMPTS
from fraqat.models.registry import TextToImage
from fraqat.quant.layers import QuantConfig, quantize_model
from fraqat.schedule import ConstantSchedule
from fraqat.train.trainer import DistillData, TrainConfig, Trainer, calibrate

GIB = 2**30
SANA_TINY = dict(SANA_600M, attention_head_dim=8, num_attention_heads=4, num_layers=2,
                 cross_attention_dim=32, cross_attention_head_dim=8,
                 num_cross_attention_heads=4, caption_channels=64, sample_size=8)
FLUX_REDUCED = dict(num_layers=2, num_single_layers=4)  # of 19 + 38 in FLUX.1
FLUX_TINY = dict(num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
                 axes_dims_rope=(4, 6, 6))
VARIANTS = ("fp", "w4a8", "torchao")
MODES = ("eager", "graph", "compile")


class FixedEncoder(nn.Module):
    """Stands in for the frozen text encoder: fixed random caption states per prompt."""

    def __init__(self, tokens: int, width: int):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("hidden", torch.randn(len(PROMPTS), tokens, width, generator=g))
        self.register_buffer("mask", torch.ones(len(PROMPTS), tokens, dtype=torch.long))

    def encode(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hidden[: len(prompts)], self.mask[: len(prompts)]


class FluxStudent(TextToImage):
    """FLUX's call convention (packed latent tokens, pooled text, position ids)."""

    def predict(self, x, t, hidden, mask):
        b, tokens = x.shape[0], x.shape[1]
        return self.transformer(hidden_states=x, encoder_hidden_states=hidden,
                                pooled_projections=hidden[:, 0, :self.pooled], timestep=t,
                                img_ids=self.img_ids[:tokens], txt_ids=self.txt_ids,
                                return_dict=False)[0].reshape(b, tokens, -1)


def build(model: str, smoke: bool, device: str) -> tuple[TextToImage, DistillData, int, str]:
    g = torch.Generator().manual_seed(1)
    n = 16 if smoke else 64
    if model == "sana":
        from diffusers import SanaTransformer2DModel
        cfg = SANA_TINY if smoke else SANA_600M
        tokens, side, ch = (8 if smoke else 300), cfg["sample_size"], cfg["in_channels"]
        student = TextToImage(SanaTransformer2DModel(**cfg),
                              FixedEncoder(tokens, cfg["caption_channels"]), (ch, side, side))
        shape, batch = (ch, side, side), 2 if smoke else 8
        label = (f"Sana-{'tiny' if smoke else '600M'} config, batch {batch}, "
                 f"{side}x{side}x{ch} latents, {tokens} caption tokens")
    else:
        from diffusers import FluxTransformer2DModel
        cfg = FLUX_TINY if smoke else FLUX_REDUCED
        img, txt = (16, 8) if smoke else (4096, 512)
        joint = cfg.get("joint_attention_dim", 4096)
        student = FluxStudent(FluxTransformer2DModel(**cfg), FixedEncoder(txt, joint), (img, 64))
        student.pooled = cfg.get("pooled_projection_dim", 768)
        student.img_ids = torch.randn(img, 3, generator=g).to(device)
        student.txt_ids = torch.zeros(txt, 3, device=device)
        shape, batch = (img, 64), 1 if smoke else 2
        label = (f"FLUX.1 reduced to {cfg['num_layers']} double + {cfg['num_single_layers']} "
                 f"single blocks, batch {batch}, {img} image + {txt} text tokens")
    data = DistillData(torch.randn(n, *shape, generator=g), torch.rand(n, generator=g),
                       torch.randint(0, len(PROMPTS), (n,), generator=g),
                       torch.randn(n, *shape, generator=g))
    return student.to(device), data.to(device), batch, label


def make_trainer(args, variant: str, mode: str, tmp: Path) -> tuple[Trainer, str]:
    torch.manual_seed(0)
    student, data, batch, label = build(args.model, args.smoke, args.device)
    if variant == "w4a8":
        quantize_model(student.transformer, QuantConfig(weight_bits=args.bits, act_bits=8.0,
                                                        granularity=args.granularity))
        calibrate(student, data, batch_size=batch, num_batches=1)
    elif variant == "torchao":
        from torchao.quantization import quantize_
        from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig
        act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
        weight = IntxFakeQuantizeConfig(torch.int4, group_size=32, is_symmetric=True)
        quantize_(student.transformer, QATConfig(activation_config=act, weight_config=weight,
                                                 step="prepare"))
    cfg = TrainConfig(steps=10**6, lr=1e-5, batch_size=batch, checkpoint_every=10**9, seed=0,
                      cuda_graphs="on" if mode == "graph" else "off", autocast="bf16")
    trainer = Trainer(student, data, ConstantSchedule(args.bits, 10**6), cfg, tmp / "ckpt",
                      tmp / "log.tsv")
    if mode == "compile":
        student.transformer.compile()
    trainer.build_runner()
    return trainer, label


def bench(args, variant: str, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainer, label = make_trainer(args, variant, mode, Path(tmp))
        steps = itertools.count()

        def fn() -> None:
            trainer.train_step(next(steps))

        for _ in range(args.warmup):  # compile, capture, Triton JIT, cuBLAS handles
            fn()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        repeats = [wall_ms(fn, warmup=1, reps=args.steps) for _ in range(args.repeats)]
        cuda = torch.cuda.is_available()
        peak = torch.cuda.max_memory_allocated() / GIB if cuda else 0.0
        row = {"variant": variant, "mode": mode, "label": label, **spread(repeats),
               "peak_gib": peak, "params_m": sum(p.numel() for p in trainer.params) / 1e6,
               # a graph's activations live in its pool: reserved, not allocated, memory
               "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else 0.0}
        if args.profile and mode in args.profile_modes.split(","):
            row["profile"] = profile(fn, args.profile, f"{args.model} {variant} {mode}")
        trainer.runner.release()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return row


def profile(fn, path: Path, title: str, n: int = 3) -> dict:
    """GPU kernel time vs host wall time of ``n`` steps; top kernels appended to ``path``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    sync()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        sync()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
    gpu_ms = sum(e.self_device_time_total for e in kernels) / n / 1e3  # not the annotations
    quant = sum(e.self_device_time_total for e in kernels if e.key.endswith("_kernel")
                and e.key.startswith(("_group", "_tensor", "_masked")))
    launches = sum(e.count for e in kernels) / n
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(f"\n=== {title}: {gpu_ms:.1f} ms GPU kernel time per step, "
                f"{launches:.0f} kernels per step ===\n")
        f.write(events.table(sort_by="self_device_time_total", row_limit=20))
    return {"gpu_ms_per_step": gpu_ms, "fake_quant_ms_per_step": quant / n / 1e3,
            "kernels_per_step": launches}


def table(res: dict) -> str:
    m = res["meta"]
    lines = [f"{m['device']} | torch {m['torch']} | triton {m['triton']} | diffusers "
             f"{m['diffusers']} | {m['date']}", res.get("label", ""),
             f"{'variant':9}{'mode':9}{'ms/step':>9}{'spread':>15}{'x FP':>7}{'reserved':>10}"
             f"{'x FP':>7}{'GPU ms':>8}{'kernels':>9}"]
    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"{r['variant']:9}{r['mode']:9}skipped: {r['skipped']}")
            continue
        p = r.get("profile", {})
        lo_hi = f"[{r['lo']:.1f}-{r['hi']:.1f}]"
        lines.append(f"{r['variant']:9}{r['mode']:9}{r['median']:9.1f}"
                     f"{lo_hi:>15}{r.get('x_fp', float('nan')):7.2f}"
                     f"{r['peak_reserved_gib']:10.1f}{r.get('x_fp_mem', float('nan')):7.2f}"
                     f"{p.get('gpu_ms_per_step', float('nan')):8.1f}"
                     f"{p.get('kernels_per_step', float('nan')):9.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["sana", "flux"], default="sana")
    p.add_argument("--variants", default="fp,w4a8")
    p.add_argument("--modes", default="eager,graph,compile")
    p.add_argument("--bits", type=float, default=4.0)
    p.add_argument("--granularity", choices=["tensor", "channel", "group"], default="tensor")
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--profile", type=Path, help="append torch.profiler tables here")
    p.add_argument("--profile-modes", default="eager,graph")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device")
    args = p.parse_args(argv)
    bad = [v for v in args.variants.split(",") if v not in VARIANTS] + [
        m for m in args.modes.split(",") if m not in MODES]
    if bad:
        p.error(f"{bad} not allowed (allowed variants: {', '.join(VARIANTS)}; "
                f"modes: {', '.join(MODES)})")
    if not torch.cuda.is_available() and not args.smoke:
        p.error("no CUDA device (allowed without one: --smoke)")
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    res: dict = {"meta": meta(), "model": args.model, "rows": []}
    for mode in args.modes.split(","):
        for variant in args.variants.split(","):
            if mode == "graph" and args.device != "cuda":
                continue
            try:
                row = bench(args, variant, mode)
                res["label"] = row.pop("label")
            except ImportError as err:
                row = {"variant": variant, "mode": mode, "skipped": f"missing {err.name}"}
            except Exception as err:  # one broken mode must not hide the others' numbers
                traceback.print_exc()
                row = {"variant": variant, "mode": mode, "skipped": first_line(err)}
            res["rows"].append(row)
            fp = next((r for r in res["rows"] if r["variant"] == "fp" and r["mode"] == mode
                       and "median" in r), None)
            if fp and "median" in row:
                row["x_fp"] = row["median"] / fp["median"]
                row["x_fp_mem"] = (row["peak_reserved_gib"] / fp["peak_reserved_gib"]
                                   if fp["peak_reserved_gib"] else 0.0)
            print(table(res).splitlines()[-1], flush=True)
            write_json(args.json, res)
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
