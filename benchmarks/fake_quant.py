"""Bandwidth of fraqat's fake-quant ops against a device-to-device copy and torch's INT4 op.

    python -m benchmarks.fake_quant --json out.json          # on a GPU: 8192x8192, fp32 + bf16
    python -m benchmarks.fake_quant --device cpu --size 1024 --repeats 2

For fp32 and bf16, per tensor / channel / group of 64 at 4 bits, forward ("fwd", a training
forward: autograd records it) and forward+backward ("f+b") through :func:`fraqat.quant.ops.
fake_quantize` (the one dispatch point: Triton on CUDA) and, for comparison, the PyTorch
reference on the same device. GB/s counts the bytes a perfect kernel must move: read x and
write y (fwd), plus read dy and write dx (f+b); "% copy" divides by the measured copy. Per
tensor needs a second read of x for the global abs-max: its bound is 2/3 of copy (fwd) and
4/5 (f+b), reported as "% bound". Each number is the median of ``--repeats`` repeats of
``--reps`` calls, with the spread (min-max of the repeat medians); "exact" compares values
and gradients with the CPU reference. Kernel times are CUDA-graph replays of 10 calls (the
GPU work alone, as the trainer's default CUDA-graph step runs it); "eager f+b ms" is one
eager call, host launch work included.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.timing import meta, spread, sync, time_ms, write_json
from fraqat.quant import kernels, ops
from fraqat.quant.core import QParams, compute_qparams, fake_quantize, grid_tensor

BOUND = {"tensor": {"fwd": 2 / 3, "f+b": 4 / 5}}  # of copy: the extra read of x


GRAPH_CALLS = 10


def _repeat(fn: Callable[[], object], repeats: int, reps: int, graph: bool = True) -> dict:
    """Per-call kernel time: replays of a CUDA graph of ``GRAPH_CALLS`` calls (host clock and
    plain calls on the CPU; eager calls where ``graph`` is off)."""
    if not (graph and torch.cuda.is_available()):
        return spread([time_ms(fn, warmup=2, reps=reps) for _ in range(repeats)])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPH_CALLS):
            fn()
    res = spread([[t / GRAPH_CALLS for t in time_ms(graph.replay, warmup=2, reps=reps)]
                  for _ in range(repeats)])
    del graph
    torch.cuda.empty_cache()
    return res


def _exact(fq: Callable, x: torch.Tensor, g: torch.Tensor, gran: str, bits: float) -> str:
    xc = x.detach().cpu().requires_grad_(True)
    y_ref = fake_quantize(xc, bits, granularity=gran)
    (dx_ref,) = torch.autograd.grad(y_ref, xc, g.cpu())
    xd = x.detach().clone().requires_grad_(True)
    y = fq(xd)
    (dx,) = torch.autograd.grad(y, xd, g)
    bad_y = int((y.detach().cpu() != y_ref.detach()).sum())
    bad_dx = int((dx.cpu() != dx_ref).sum())
    return "yes" if bad_y + bad_dx == 0 else f"no: {bad_y} y, {bad_dx} dx differ"


def bench_dtype(dtype: torch.dtype, args: argparse.Namespace) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(args.size, args.size, generator=gen) * 0.02).to(dtype).to(args.device)
    g = torch.randn(args.size, args.size, generator=gen).to(dtype).to(args.device)
    x.requires_grad_(True)
    nbytes = x.numel() * x.element_size()
    name = str(dtype).removeprefix("torch.")
    out = torch.empty_like(x)
    copy = _repeat(lambda: out.copy_(x.detach()), args.repeats, args.reps)
    copy_gbs = 2 * nbytes / copy["median"] / 1e6
    rows = [{"dtype": name, "granularity": "-", "path": "copy (D2D)", "fwd": copy,
             "fwd_gbs": copy_gbs, "fwd_pct": 100.0}]
    qp = compute_qparams(x, 4.0, granularity="channel")
    cases: list[tuple[str, str, Callable]] = [("channel", "torch per-channel INT4", lambda t:
        torch.fake_quantize_per_channel_affine(t, qp.scale.flatten(), qp.zero_point.flatten(),
                                               0, qp.quant_min, qp.quant_max))]
    grid = grid_tensor(args.bits, True, x.device)  # as the layers hold it: capturable
    for gran in ("tensor", "channel", "group"):
        for path in args.paths.split(","):
            cases.append((gran, path, lambda t, gran=gran: ops.fake_quantize_grid(
                t, grid, granularity=gran, group_size=args.group_size)))
    for gran, path, fq in cases:
        row = {"dtype": name, "granularity": gran, "path": path}
        ours = path in kernels.BACKENDS  # torch's op syncs: not capturable, timed eagerly
        row["timing"] = "graph" if ours else "eager"
        with kernels.use_backend(path if ours else "reference"):
            if ours:
                row["exact"] = _exact(fq, x, g, gran, args.bits)
            row["fwd"] = _repeat(lambda fq=fq: fq(x), args.repeats, args.reps, ours)
            row["f+b"] = _repeat(lambda fq=fq: torch.autograd.grad(fq(x), x, g),
                                 args.repeats, args.reps, ours)
            row["eager_fb_ms"] = statistics.median(
                time_ms(lambda fq=fq: torch.autograd.grad(fq(x), x, g), reps=args.reps))
        for mode, tensors in (("fwd", 2), ("f+b", 4)):
            s = row[mode]
            row[f"{mode}_gbs"] = tensors * nbytes / s["median"] / 1e6
            row[f"{mode}_pct"] = 100 * row[f"{mode}_gbs"] / copy_gbs
            row[f"{mode}_pct_lo"] = 100 * tensors * nbytes / s["hi"] / 1e6 / copy_gbs
            row[f"{mode}_pct_hi"] = 100 * tensors * nbytes / s["lo"] / 1e6 / copy_gbs
            if gran in BOUND and path == "triton":
                row[f"{mode}_pct_bound"] = row[f"{mode}_pct"] / BOUND[gran][mode]
        rows.append(row)
    return rows


def host_overhead_us(device: str, calls: int = 300) -> list[dict]:
    """Host time of one forward+backward call on a tiny tensor: what eager steps pay per op."""
    x = torch.randn(64, 64, device=device, requires_grad=True)
    g = torch.ones(64, 64, device=device)
    qp = compute_qparams(x, 8.0, symmetric=False)
    scale, zp = qp.scale.reshape(()), qp.zero_point.reshape(())
    grid = torch.tensor([7.0, -7.0, 7.0], device=device)
    given = QParams(scale, zp, 0, 255)
    cases = {"x * 2 (one aten op)": lambda t: t * 2,
             "torch.fake_quantize_per_tensor_affine":
                 lambda t: torch.fake_quantize_per_tensor_affine(t, scale, zp, 0, 255),
             "layers' weight path (autograd.Function)": lambda t: ops.fake_quantize_grid(t, grid),
             "layers' activation path (autograd.Function)":
                 lambda t: ops.fake_quantize_given(t, given),
             "fraqat::fake_quant (custom op)": lambda t: torch.ops.fraqat.fake_quant(
                 t, grid, "tensor", 64, True, t.dtype)[0],
             "fraqat::fake_quant_given (custom op)": lambda t: torch.ops.fraqat.fake_quant_given(
                 t, scale, zp, 0, 255, t.dtype)[0]}
    rows = []
    for name, fn in cases.items():
        for _ in range(20):
            torch.autograd.grad(fn(x), x, g)
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            torch.autograd.grad(fn(x), x, g)
        sync()
        rows.append({"case": name, "us_per_fwd_bwd": (time.perf_counter() - t0) / calls * 1e6})
    return rows


def _pct(r: dict, mode: str) -> str:
    if f"{mode}_pct" not in r:
        return f"{'-':>17}"
    text = f"{r[f'{mode}_pct']:4.0f} [{r.get(f'{mode}_pct_lo', 100):3.0f}-" \
           f"{r.get(f'{mode}_pct_hi', 100):3.0f}]"
    return f"{text:>17}"


def table(res: dict) -> str:
    m = res["meta"]
    lines = [f"{m['device']} | torch {m['torch']} | triton {m['triton']} | {m['date']}",
             f"fake-quant {res['size']}x{res['size']} at {res['bits']:g} bits: % of copy, "
             f"median [spread over {res['repeats']} repeats]",
             f"{'dtype':9}{'gran.':9}{'path':24}{'fwd ms':>8}{'fwd %copy':>17}{'f+b ms':>8}"
             f"{'f+b %copy':>17}{'%bound':>13}{'eager f+b':>10}  exact"]
    for r in res["rows"]:
        fb = r.get("f+b", {}).get("median")
        bound = (f"{r['fwd_pct_bound']:5.0f} /{r['f+b_pct_bound']:5.0f}"
                 if "fwd_pct_bound" in r else "-")
        lines.append(f"{r['dtype']:9}{r['granularity']:9}{r['path']:24}"
                     f"{r['fwd']['median']:8.3f}{_pct(r, 'fwd')}"
                     f"{'-' if fb is None else format(fb, '8.3f'):>8}{_pct(r, 'f+b')}"
                     f"{bound:>13}{r.get('eager_fb_ms', float('nan')):10.3f}"
                     f"  {r.get('exact', '-')}")
    lines += ["", "host time per forward+backward call on a 64x64 tensor (eager launch cost)"]
    lines += [f"  {r['case']:44}{r['us_per_fwd_bwd']:8.1f} us" for r in res["host_overhead"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--paths", default="triton,reference")
    p.add_argument("--bits", type=float, default=4.0)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available (allowed: cpu)")
    res = {"meta": meta(), "size": args.size, "bits": args.bits, "repeats": args.repeats,
           "reps": args.reps, "rows": []}
    for name in args.dtypes.split(","):
        res["rows"] += bench_dtype(getattr(torch, name), args)
    res["host_overhead"] = host_overhead_us(args.device)
    write_json(args.json, res)
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
