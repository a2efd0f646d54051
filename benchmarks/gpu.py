"""GPU performance of fraqat's fake quantization and of one QAT training step (issue 8).

    python benchmarks/gpu.py [--parts quant,sana,flux] [--json out.json] [--profile DIR]

quant: fake-quant forward and forward+backward of large weights (8192x8192 fp32 and bf16)
for the PyTorch reference, torch.compile and Triton paths, against the measured
device-to-device copy and ``torch.fake_quantize_per_channel_affine`` (4 bits). GB/s counts
the bytes a perfect kernel must move: read x + write y (forward), plus read dy + write dx
(backward); "exact" compares with the CPU reference on the same data.

sana / flux: one training step (bf16 autocast, AdamW, MSE distillation loss against a fixed
target) of diffusers' SanaTransformer2DModel at the Sana-600M configuration and of a
depth-reduced FluxTransformer2DModel (the full 12B model's fp32 weights and AdamW state do not
fit one 80 GB card): full precision vs fraqat W4A8 (per-tensor fractional weights at 4 bits,
INT8 activations calibrated on one batch) vs torchao QAT (int4 group-32 weights, int8
per-token activations). Median step time over CUDA events after warm-up, peak memory from
``torch.cuda.max_memory_allocated``; then the same step captured in a CUDA graph and replayed
(no host overhead). A part whose package is missing is skipped with a line.

``--smoke`` runs tiny sizes on whatever device there is (a CPU check of the plumbing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from fraqat import kernels
from fraqat.activations import ActQuantizer
from fraqat.modules import QuantConfig, _QuantMixin, calibrate_activations, quantize_model
from fraqat.quant import compute_qparams, fake_quantize, quantize_with_qparams

GIB = 2**30
SANA_600M = dict(attention_head_dim=32, num_attention_heads=36, num_layers=28,
                 cross_attention_dim=1152, cross_attention_head_dim=72,
                 num_cross_attention_heads=16, caption_channels=2304, in_channels=32,
                 out_channels=32, patch_size=1, sample_size=32, mlp_ratio=2.5,
                 norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=False)
SANA_TINY = dict(SANA_600M, attention_head_dim=8, num_attention_heads=4, num_layers=2,
                 cross_attention_dim=32, cross_attention_head_dim=8,
                 num_cross_attention_heads=4, caption_channels=64, sample_size=8)
FLUX_REDUCED = dict(num_layers=2, num_single_layers=4)  # of 19 + 38 in FLUX.1
FLUX_TINY = dict(num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
                 axes_dims_rope=(4, 6, 6))
VARIANTS = {  # name -> what the step trains; in order of importance (a time budget cuts the tail)
    "fp": "full precision",
    "fraqat-w4a8": "fraqat W4A8, fused Triton fake-quant (default dispatch)",
    "fraqat-w4a8-fusedcast": "same, kernels also emit autocast's bf16 (proposed module change)",
    "torchao-qat": "torchao QAT: int4 group-32 weights, int8 per-token activations",
    "fraqat-w4a8-reference": "fraqat W4A8, PyTorch reference fake-quant (eager)",
    "fraqat-w4a8-compile": "fraqat W4A8, torch.compile'd fake-quant",
}


# --- timing ---------------------------------------------------------------------------------


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 20) -> list[float]:
    """Per-call times in ms: CUDA events on a GPU, the host clock after a sync elsewhere."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


# --- part (a): fake-quant throughput --------------------------------------------------------


def _grad_fn(fq: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             g: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: torch.autograd.grad(fq(x), x, g)[0]


def _exactness(fq, x: torch.Tensor, g: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor]):
    y = fq(x)
    (dx,) = torch.autograd.grad(y, x, g)
    dy = (y.detach().float().cpu() - ref[0].float()).abs()
    ddx = (dx.float().cpu() - ref[1].float()).abs()
    return {"y_mismatches": int((dy != 0).sum()), "y_max_abs_diff": float(dy.max()),
            "dx_mismatches": int((ddx != 0).sum())}


def bench_quant(size: int, dtypes: list[torch.dtype], device: str, reps: int) -> list[dict]:
    rows = []
    for dtype in dtypes:
        rows += _bench_quant_dtype(size, dtype, device, reps)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def _bench_quant_dtype(size: int, dtype: torch.dtype, device: str, reps: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    x_cpu = (torch.randn(size, size, generator=gen) * 0.02).to(dtype)
    g_cpu = torch.randn(size, size, generator=gen).to(dtype)
    x = x_cpu.to(device).requires_grad_(True)
    g = g_cpu.to(device)
    nbytes = x.numel() * x.element_size()
    name = str(dtype).removeprefix("torch.")
    out = torch.empty_like(x)
    copy_ms = statistics.median(time_ms(lambda: out.copy_(x.detach()), reps=reps))
    copy_gbs = 2 * nbytes / copy_ms / 1e6
    rows = [{"dtype": name, "granularity": "-", "path": "copy (D2D)", "fwd_ms": copy_ms,
             "fwd_gbs": copy_gbs},
            _torch_per_channel_row(x, g, name, nbytes, copy_gbs, reps)]
    for gran in ("tensor", "channel", "group"):
        def fq(t: torch.Tensor, gran: str = gran) -> torch.Tensor:
            return fake_quantize(t, 4.0, granularity=gran, group_size=64)
        xr = x_cpu.clone().requires_grad_(True)
        y_ref = fq(xr)  # CPU reference
        ref = (y_ref.detach(), torch.autograd.grad(y_ref, xr, g_cpu)[0])
        for path in ("reference", "compile", "triton"):
            if path != "reference" and not kernels.triton_available():
                rows.append({"dtype": name, "granularity": gran, "path": path,
                             "skipped": "Triton missing"})
                continue
            row = {"dtype": name, "granularity": gran, "path": path}
            try:
                with kernels.use_backend(path):
                    row.update(_exactness(fq, x, g, ref))
                    fwd = statistics.median(time_ms(lambda fq=fq: fq(x), reps=reps))  # train fwd
                    fb = statistics.median(time_ms(_grad_fn(fq, x, g), reps=reps))
            except Exception as err:  # one broken path must not hide the others' numbers
                traceback.print_exc()
                rows.append({**row, "skipped": f"error: {_first_line(err)}"})
                continue
            row.update(fwd_ms=fwd, fwd_gbs=2 * nbytes / fwd / 1e6, fb_ms=fb,
                       fb_gbs=4 * nbytes / fb / 1e6)
            row.update(fwd_pct_copy=100 * row["fwd_gbs"] / copy_gbs,
                       fb_pct_copy=100 * row["fb_gbs"] / copy_gbs)
            rows.append(row)
    return rows


def host_overhead_us(device: str, calls: int = 300) -> list[dict]:
    """Host time of one call on a tiny tensor (GPU work negligible): what eager steps pay."""
    x = torch.randn(64, 64, device=device, requires_grad=True)
    g = torch.ones(64, 64, device=device)
    qp = compute_qparams(x, 8.0, symmetric=False)
    scale, zp = qp.scale.reshape(()), qp.zero_point.reshape(())
    cases = {"x * 2 (one aten op, fwd+bwd)": lambda t: t * 2,
             "torch.fake_quantize_per_tensor_affine":
                 lambda t: torch.fake_quantize_per_tensor_affine(t, scale, zp, 0, 255),
             "fraqat weight fake-quant, triton": lambda t: fake_quantize(t, 4.0),
             "fraqat activation (given qparams), triton": lambda t: quantize_with_qparams(t, qp)}
    rows = []
    for name, fn in cases.items():
        with kernels.use_backend("triton"):
            for _ in range(20):
                torch.autograd.grad(fn(x), x, g)
            _sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                torch.autograd.grad(fn(x), x, g)
            _sync()
        rows.append({"case": name, "us_per_fwd_bwd": (time.perf_counter() - t0) / calls * 1e6})
    return rows


def _torch_per_channel_row(x, g, name, nbytes, copy_gbs, reps) -> dict:
    """torch's INT4 per-channel fake-quant with precomputed scales (no abs-max pass)."""
    row = {"dtype": name, "granularity": "channel",
           "path": "torch.fake_quantize_per_channel_affine"}
    qp = compute_qparams(x, 4.0, granularity="channel")
    scale, zp = qp.scale.flatten(), qp.zero_point.flatten()

    def fq(t):
        return torch.fake_quantize_per_channel_affine(t, scale, zp, 0, qp.quant_min,
                                                      qp.quant_max)
    try:
        fwd = statistics.median(time_ms(lambda: fq(x), reps=reps))
        fb = statistics.median(time_ms(_grad_fn(fq, x, g), reps=reps))
    except RuntimeError as err:
        return {**row, "skipped": f"unsupported: {_first_line(err)}"}
    return {**row, "fwd_ms": fwd, "fwd_gbs": 2 * nbytes / fwd / 1e6, "fb_ms": fb,
            "fb_gbs": 4 * nbytes / fb / 1e6, "fwd_pct_copy": 100 * 2 * nbytes / fwd / 1e6 /
            copy_gbs, "fb_pct_copy": 100 * 4 * nbytes / fb / 1e6 / copy_gbs}


# --- parts (b), (c): training steps ---------------------------------------------------------


def sana_case(batch: int, smoke: bool, device: str):
    from diffusers import SanaTransformer2DModel

    cfg = SANA_TINY if smoke else SANA_600M
    gen = torch.Generator().manual_seed(1)
    side, tokens = cfg["sample_size"], 8 if smoke else 300
    inputs = {"hidden_states": torch.randn(batch, cfg["in_channels"], side, side, generator=gen),
              "encoder_hidden_states": torch.randn(batch, tokens, cfg["caption_channels"],
                                                   generator=gen),
              "timestep": torch.randint(0, 1000, (batch,), generator=gen).float()}
    inputs = {k: v.to(device) for k, v in inputs.items()}
    label = (f"Sana-600M config (random init), batch {batch}, {side}x{side}x"
             f"{cfg['in_channels']} latents, {tokens} caption tokens")
    return label, lambda: SanaTransformer2DModel(**cfg), inputs


def flux_case(batch: int, smoke: bool, device: str):
    from diffusers import FluxTransformer2DModel

    cfg = FLUX_TINY if smoke else FLUX_REDUCED
    gen = torch.Generator().manual_seed(2)
    img, txt = (16, 8) if smoke else (4096, 512)  # 1024px: 128x128 latents, 2x2 packed
    joint, pooled = cfg.get("joint_attention_dim", 4096), cfg.get("pooled_projection_dim", 768)
    inputs = {"hidden_states": torch.randn(batch, img, 64, generator=gen),
              "encoder_hidden_states": torch.randn(batch, txt, joint, generator=gen),
              "pooled_projections": torch.randn(batch, pooled, generator=gen),
              "timestep": torch.rand(batch, generator=gen),
              "img_ids": torch.randn(img, 3, generator=gen),
              "txt_ids": torch.zeros(txt, 3)}
    inputs = {k: v.to(device) for k, v in inputs.items()}
    label = (f"FLUX.1 transformer reduced to {cfg['num_layers']} double + "
             f"{cfg['num_single_layers']} single blocks (random init), batch {batch}, "
             f"{img} image + {txt} text tokens")
    return label, lambda: FluxTransformer2DModel(**cfg), inputs


def _forward(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    # no autocast weight-cast cache: CUDA graph capture needs it off (same for every variant)
    with torch.autocast(inputs["hidden_states"].device.type, dtype=torch.bfloat16,
                        cache_enabled=False):
        return model(**inputs, return_dict=False)[0]


@contextlib.contextmanager
def _fused_casts() -> Iterator[None]:
    """Prototype of a modules/activations change: quantizers emit autocast's dtype directly.

    Values are those of the default path (the matmul would cast fp32 to bf16 anyway); what
    goes away is the fp32 round trip of every weight and activation and its cast kernels.
    """
    act_forward, weight_fn = ActQuantizer.forward, _QuantMixin.quantized_weight

    def dtype_for(t: torch.Tensor) -> torch.dtype:
        dev = t.device.type
        return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype

    def act(self, x):
        if self.bits is None or self.observing or not self._ready or self.learn:
            return act_forward(self, x)
        y = kernels.fake_quantize_activation(x, self.qparams(), out_dtype=dtype_for(x))
        return act_forward(self, x) if y is None else y

    def weight(self):
        bits = self.effective_bits
        y = None if bits is None else kernels.fake_quantize_triton(
            self.weight, bits, granularity=self.granularity, group_size=self.group_size,
            symmetric=self.symmetric, out_dtype=dtype_for(self.weight))
        return weight_fn(self) if y is None else y

    ActQuantizer.forward, _QuantMixin.quantized_weight = act, weight
    try:
        yield
    finally:
        ActQuantizer.forward, _QuantMixin.quantized_weight = act_forward, weight_fn


def _prepare(variant: str, model: torch.nn.Module,
             inputs: dict) -> contextlib.AbstractContextManager:
    """Quantize ``model`` in place for ``variant``; returns the context its steps run in."""
    if variant == "fp":
        return contextlib.nullcontext()
    if variant == "torchao-qat":
        from torchao.quantization import quantize_
        from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

        act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
        weight = IntxFakeQuantizeConfig(torch.int4, group_size=32, is_symmetric=True)
        quantize_(model, QATConfig(activation_config=act, weight_config=weight, step="prepare"))
        return contextlib.nullcontext()
    quantize_model(model, QuantConfig(weight_bits=4.0, act_bits=8.0))
    backend = {"fraqat-w4a8-compile": "compile", "fraqat-w4a8-reference": "reference"}.get(
        variant, "triton")
    with kernels.use_backend(backend):
        calibrate_activations(model, [inputs], _forward)
    if variant == "fraqat-w4a8-fusedcast":
        stack = contextlib.ExitStack()
        stack.enter_context(kernels.use_backend("triton"))
        stack.enter_context(_fused_casts())
        return stack
    return kernels.use_backend(backend)


def bench_step(variant: str, build: Callable[[], torch.nn.Module], inputs: dict, steps: int,
               warmup: int, profile: Path | None, tag: str, graphs: bool) -> dict:
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device(inputs["hidden_states"].device):
        model = build()
    ctx = _prepare(variant, model, inputs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, capturable=cuda)
    with torch.no_grad():
        target = torch.randn_like(_forward(model, inputs).float())  # fixed distillation target

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(_forward(model, inputs).float(), target)
        loss.backward()
        opt.step()

    with ctx:
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        _sync()
        warm_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = time_ms(step, warmup=0, reps=steps)
        peak = torch.cuda.max_memory_allocated() / GIB if cuda else float("nan")
        top = _profile(step, profile, f"{tag} {variant}") if (profile and cuda) else None
        graph = _graph_timing(model, inputs, target, opt, steps) if (graphs and cuda) else {}
    params = sum(p.numel() for p in model.parameters())
    row = {"variant": variant, "what": VARIANTS[variant], "median_ms": statistics.median(times),
           "min_ms": min(times), "max_ms": max(times), "steps": steps, "peak_gib": peak,
           "warmup_s": warm_s, "params_m": params / 1e6, **graph}
    if top:
        row["top_kernels"] = top
    return row


def _graph_timing(model: torch.nn.Module, inputs: dict, target: torch.Tensor,
                  opt: torch.optim.Optimizer, steps: int) -> dict:
    """The same step captured whole in a CUDA graph: GPU time without host launch overhead.

    Eager steps of a 600M DiT at batch 8 are partly bound by Python/launch time, and fake-quant
    adds two calls per layer and pass; replaying a graph shows what the GPU work itself costs.
    """
    def body() -> None:
        F.mse_loss(_forward(model, inputs).float(), target).backward()
        opt.step()

    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the default stream, as capture needs
            for _ in range(2):
                opt.zero_grad(set_to_none=True)
                body()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.reset_peak_memory_stats()
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            body()
        times = time_ms(graph.replay, warmup=2, reps=steps)
    except Exception as err:  # a host sync in the model or a library: no graph for it
        traceback.print_exc()
        return {"graph_error": _first_line(err)}
    return {"graph_median_ms": statistics.median(times),
            "graph_peak_gib": torch.cuda.max_memory_allocated() / GIB}


def _profile(step: Callable[[], None], path: Path, title: str, n: int = 2) -> list[dict]:
    """Top GPU kernels of ``n`` steps (torch.profiler), appended to ``path``; top 8 returned."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        _sync()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in events) / n / 1e3
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(f"\n=== {title}: {n} steps, {total:.1f} ms GPU time per step ===\n")
        f.write(prof.key_averages().table(sort_by="self_device_time_total", row_limit=25))
    return [{"kernel": e.key[:90], "ms_per_step": e.self_device_time_total / n / 1e3,
             "pct": 100 * e.self_device_time_total / n / 1e3 / total} for e in events[:8]]


def bench_model(case, variants: list[str], args, device: str, tag: str,
                deadline: float) -> dict:
    try:
        label, build, inputs = case(args.batch if tag == "sana" else args.flux_batch,
                                    args.smoke, device)
    except ImportError as err:
        return {"skipped": f"diffusers missing ({err})", "rows": []}
    result = {"label": label, "rows": []}
    for variant in variants:
        if time.monotonic() > deadline:
            result["rows"].append({"variant": variant, "skipped": "out of time budget"})
            continue
        try:
            profile = args.profile if variant in args.profile_variants.split(",") else None
            row = bench_step(variant, build, inputs, args.steps, args.warmup, profile, tag,
                             not args.no_graphs)
        except ImportError as err:
            row = {"variant": variant, "skipped": f"package missing ({err.name})"}
        except torch.OutOfMemoryError:
            row = {"variant": variant, "skipped": "out of GPU memory at this batch"}
        except Exception as err:
            traceback.print_exc()
            row = {"variant": variant, "skipped": f"error: {_first_line(err)}"}
        gc.collect()  # the model, its optimizer state and activations go before the next one
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        result["rows"].append(row)
        print(f"  {tag} {variant}: {_fmt_step(row)}", flush=True)
    fp = next((r for r in result["rows"] if r["variant"] == "fp" and "median_ms" in r), None)
    for r in result["rows"]:
        if fp and "median_ms" in r:
            r["x_fp_time"] = r["median_ms"] / fp["median_ms"]
            r["x_fp_mem"] = r["peak_gib"] / fp["peak_gib"]  # nan without CUDA
        if fp and "graph_median_ms" in r and "graph_median_ms" in fp:
            r["graph_x_fp_time"] = r["graph_median_ms"] / fp["graph_median_ms"]
    return result


# --- report ---------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:100] if str(err) else ''}"


def _fmt_step(r: dict) -> str:
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    return f"{r['median_ms']:.1f} ms, peak {r['peak_gib']:.1f} GiB"


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(res: dict) -> str:
    m = res["meta"]
    lines = [f"device: {m['device']} | torch {m['torch']} | triton {m['triton']} | "
             f"diffusers {m['diffusers']} | torchao {m['torchao']} | {m['date']}"]
    if "quant" in res:
        lines += ["", f"fake-quant {m['quant_size']}x{m['quant_size']}, 4 bits "
                  "(GB/s = minimal bytes / time; % = of D2D copy)",
                  f"{'dtype':9}{'gran.':9}{'path':40}{'fwd ms':>8}{'fwd GB/s':>10}{'%':>5}"
                  f"{'f+b ms':>8}{'f+b GB/s':>10}{'%':>5}  exact vs CPU"]
        for r in res["quant"]:
            if "skipped" in r:
                lines.append(f"{r['dtype']:9}{r['granularity']:9}{r['path']:40}"
                             f"skipped: {r['skipped']}")
                continue
            exact = ("-" if "y_mismatches" not in r else "yes" if r["y_mismatches"] +
                     r["dx_mismatches"] == 0 else f"no: {r['y_mismatches']} y "
                     f"(max {r['y_max_abs_diff']:.2e}), {r['dx_mismatches']} dx")
            lines.append(f"{r['dtype']:9}{r['granularity']:9}{r['path']:40}"
                         f"{r['fwd_ms']:8.3f}{r['fwd_gbs']:10.0f}"
                         f"{_num(r.get('fwd_pct_copy'), '5.0f'):>5}"
                         f"{_num(r.get('fb_ms'), '8.3f'):>8}{_num(r.get('fb_gbs'), '10.0f'):>10}"
                         f"{_num(r.get('fb_pct_copy'), '5.0f'):>5}  {exact}")
    if "host_overhead" in res:
        lines += ["", "host time per forward+backward call on a 64x64 tensor (eager launch cost)"]
        lines += [f"  {r['case']:44}{r['us_per_fwd_bwd']:8.1f} us" for r in res["host_overhead"]]
    for tag in ("sana", "flux"):
        if tag not in res:
            continue
        part = res[tag]
        lines += ["", f"training step: {part.get('label', tag)}; bf16 autocast, AdamW, MSE"]
        if "skipped" in part:
            lines.append(f"  skipped: {part['skipped']}")
            continue
        lines.append(f"{'variant':24}{'eager ms':>9}{'x FP':>7}{'peak GiB':>10}{'x FP':>7}"
                     f"{'graph ms':>10}{'x FP':>7}{'warm-up s':>11}")
        for r in part["rows"]:
            if "skipped" in r:
                lines.append(f"{r['variant']:24}skipped: {r['skipped']}")
                continue
            graph = (f"{_num(r.get('graph_median_ms'), '10.1f'):>10}"
                     f"{_num(r.get('graph_x_fp_time'), '7.2f'):>7}")
            lines.append(f"{r['variant']:24}{r['median_ms']:9.1f}"
                         f"{_num(r.get('x_fp_time'), '7.2f'):>7}{r['peak_gib']:10.1f}"
                         f"{_num(r.get('x_fp_mem'), '7.2f'):>7}{graph}{r['warmup_s']:11.1f}"
                         + (f"  graph: {r['graph_error']}" if "graph_error" in r else ""))
    return "\n".join(lines)


def _meta(args) -> dict:
    def version(mod: str) -> str:
        try:
            return __import__(mod).__version__
        except ImportError:
            return "missing"
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"device": dev, "torch": torch.__version__, "triton": version("triton"),
            "diffusers": version("diffusers"), "torchao": version("torchao"),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["python"] + sys.argv), "quant_size": args.size,
            "batch": args.batch, "flux_batch": args.flux_batch, "steps": args.steps,
            "cudnn_sdpa": not args.no_cudnn_sdpa}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="quant,sana,flux")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--flux-batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=float("inf"),
                    help="skip the remaining training variants after this many seconds")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", type=Path, help="file for torch.profiler kernel tables")
    ap.add_argument("--profile-variants", default="fp,fraqat-w4a8,fraqat-w4a8-fusedcast,"
                    "torchao-qat")
    ap.add_argument("--no-cudnn-sdpa", action="store_true",
                    help="attention without cuDNN's SDPA backend (it faulted on FLUX, torch 2.11)")
    ap.add_argument("--no-graphs", action="store_true",
                    help="skip the CUDA-graph replay of each training step")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, any device")
    args = ap.parse_args(argv)
    parts = args.parts.split(",")
    variants = args.variants.split(",")
    bad = [p for p in parts if p not in ("quant", "overhead", "sana", "flux")] + [
        v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown part/variant {bad} (allowed parts: quant, overhead, sana, flux; "
                 f"variants: "
                 f"{', '.join(VARIANTS)})")
    if not torch.cuda.is_available() and not args.smoke:
        print("no CUDA device: this benchmark needs a GPU (or --smoke for a CPU check)")
        return 2
    if args.smoke:
        args.size, args.batch, args.flux_batch = 256, 2, 1
        args.steps, args.warmup, args.reps = 2, 1, 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    deadline = time.monotonic() + args.budget_s
    res: dict = {"meta": _meta(args)}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=1))
            tmp.replace(args.json)  # never a half-written file

    if args.no_cudnn_sdpa:
        torch.backends.cuda.enable_cudnn_sdp(False)
    if "quant" in parts:
        res["quant"] = bench_quant(args.size, [torch.float32, torch.bfloat16], device,
                                   args.reps)
    if "quant" in parts or "overhead" in parts:
        res["host_overhead"] = host_overhead_us(device)
        save()
        print(table(res), flush=True)
    for tag, case in (("sana", sana_case), ("flux", flux_case)):
        if tag in parts:
            res[tag] = bench_model(case, variants, args, device, tag, deadline)
            save()
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
