"""Throughput of fraqat's fractional fake-quantizer against torch's INT fake-quant and a copy.

    python benchmarks/fake_quant.py --device cpu --sizes 2048x2048 --bits 4.5 --json out.json

For each tensor size it times, forward ("fwd") and forward+backward ("fwd+bwd"):
``fraqat.quant.fake_quantize`` at ``--bits`` per tensor / per channel / per group, and as
references ``torch.fake_quantize_per_channel_affine`` at 4 bits (scale precomputed) and a
plain ``x.clone()``. Reported: median ms over ``--repeats`` runs after ``--warmup`` runs, and
GB/s counting only the bytes of the input/output tensors: fwd reads x and writes y (2 tensors);
fwd+bwd also reads dy and writes dx (4 tensors). Scale computation is included for fraqat
(it is part of every training forward) and excluded for the torch reference.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from gpu import time_ms  # the shared timer (benchmarks/ is on sys.path when run)

from fraqat.quant import compute_qparams, fake_quantize


def parse_size(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} is not allowed (allowed: e.g. 4096x4096)")
    return shape


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median time of ``fn`` in ms (CUDA events on a GPU, else the host clock)."""
    return statistics.median(time_ms(fn, warmup=warmup, reps=repeats))


def cases(x: torch.Tensor, bits: float, group_size: int) -> dict[str, Callable]:
    """name -> function of one tensor, all producing a tensor shaped like ``x``."""
    qp = compute_qparams(x, 4, granularity="channel", axis=0)
    scale, zp = qp.scale.flatten(), qp.zero_point.flatten()
    return {
        "copy (x.clone)": lambda t: t.clone(),
        "torch per-channel INT4": lambda t: torch.fake_quantize_per_channel_affine(
            t, scale, zp, 0, qp.quant_min, qp.quant_max),
        f"fraqat tensor b={bits:g}": lambda t: fake_quantize(t, bits),
        f"fraqat channel b={bits:g}": lambda t: fake_quantize(t, bits, granularity="channel"),
        f"fraqat group{group_size} b={bits:g}": lambda t: fake_quantize(
            t, bits, granularity="group", group_size=group_size),
    }


def bench(shape: tuple[int, ...], args: argparse.Namespace) -> list[dict]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    x = torch.randn(shape, device=device, dtype=dtype)
    xg = x.clone().requires_grad_(True)
    dy = torch.randn_like(x)
    nbytes = x.numel() * x.element_size()
    rows = []
    for name, f in cases(x, args.bits, args.group_size).items():

        def fwd_bwd(f: Callable = f) -> None:
            xg.grad = None
            f(xg).backward(dy)

        for mode, fn, tensors in (("fwd", lambda f=f: f(x), 2), ("fwd+bwd", fwd_bwd, 4)):
            with torch.inference_mode(mode == "fwd"):
                ms = timed(fn, device, args.repeats, args.warmup)
            rows.append({"size": "x".join(map(str, shape)), "op": name, "mode": mode,
                         "ms": ms, "gb_s": tensors * nbytes / ms / 1e6})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(4096, 4096)],
                   help="tensor sizes, e.g. 4096x4096 8192x8192")
    p.add_argument("--bits", type=float, default=4.5)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available (allowed: cpu)")

    machine = (torch.cuda.get_device_name() if args.device == "cuda" else
               f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    rows = [r for shape in args.sizes for r in bench(shape, args)]
    print(f"fake-quant benchmark: {args.device} ({machine}), torch {torch.__version__}, "
          f"{args.dtype}, median of {args.repeats}")
    print(f"{'size':>11}  {'op':<26} {'mode':<8} {'ms':>9} {'GB/s':>8}")
    for r in rows:
        print(f"{r['size']:>11}  {r['op']:<26} {r['mode']:<8} {r['ms']:>9.3f} {r['gb_s']:>8.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": args.device, "machine": machine, "torch": torch.__version__,
                "dtype": args.dtype, "bits": args.bits, "group_size": args.group_size,
                "repeats": args.repeats, "warmup": args.warmup}
        args.json.write_text(json.dumps({**meta, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
