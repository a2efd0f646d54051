"""Fused GPU fake quantization (Triton), dispatched from :mod:`fraqat.quant` on CUDA tensors.

Why: fake quantization is memory bound. The PyTorch reference runs about ten elementwise
kernels plus a reduction and keeps fp32 temporaries for autograd; every pass over a weight or
activation costs bandwidth. Here each case reads and writes the tensor as few times as the
math allows:

- "channel"/"group": a program holds whole groups in registers, so abs-max, scale, rounding
  and the store take one read and one write (groups up to ``MAX_GROUP`` values).
- "tensor": the global abs-max is a grid-wide reduction (float bits through int atomics), so
  one extra read, then one elementwise pass.
- backward (STE): ``dx = g`` inside the clamp range, 0 outside. Abs-max scales almost never
  clamp, so the forward records per group whether anything clamped and the backward re-reads
  ``x`` only for those groups: normally it just moves ``g`` in and ``dx`` out.
- given qparams (activations, frozen per-tensor scale): a 1-byte in-range mask is saved for
  backward instead of the fp32 input, which is a temporary there.

- elementwise modes keep a channels_last input channels_last (cuDNN's depthwise convolutions
  need it), and ``out_dtype`` lets a caller under autocast get bf16 without an fp32 round trip.

Same arithmetic as the CPU reference (IEEE divisions via ``div_rn``, ``x * (1/s)``, round half
to even, same clamp bounds), so results are bit-identical to it; tests/test_kernels.py checks
it. (Eager CUDA and inductor compute ``t / python_float`` without IEEE rounding, so those
differ from the CPU in the scale's last bit; benchmarks/RESULTS.md has the numbers.)

Backend, per call: :func:`use_backend` if active, else ``$FRAQAT_FUSED``, else "triton" where
Triton imports. "compile" runs the reference under ``torch.compile``; "reference" is off.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fraqat import quant
from fraqat.quant import QParams, check_bits, qmax

try:  # GPU machines only; everything below degrades to the PyTorch reference without it
    import triton
    import triton.language as tl
except ImportError:
    triton = None

BACKENDS = ("triton", "compile", "reference")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_GROUP = 16384  # a bigger group does not fit one program's registers: reference path
_BLOCK = 4096  # elements per program of the elementwise kernels
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (debugging)
_backend: str | None = None


def triton_available() -> bool:
    return triton is not None


def current_backend() -> str:
    """The backend the next CUDA call uses (see the module docstring)."""
    name = _backend or os.environ.get("FRAQAT_FUSED") or ("triton" if triton else "reference")
    name = {"0": "reference", "off": "reference", "1": "triton"}.get(name, name)
    if name not in BACKENDS:
        raise ValueError(f"FRAQAT_FUSED={name!r} is not allowed (allowed: {', '.join(BACKENDS)})")
    if name != "reference" and triton is None:  # inductor's GPU code is Triton too
        return "reference"
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily force a backend (benchmarks and tests compare them)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is not allowed (allowed: {', '.join(BACKENDS)})")
    old, _backend = _backend, name
    try:
        yield
    finally:
        _backend = old


def fused_enabled(t: torch.Tensor) -> bool:
    """Whether the quantized layers may call the Triton kernels directly for ``t``."""
    return t.is_cuda and not torch.compiler.is_compiling() and current_backend() == "triton"


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the next matmul runs in: autocast's if enabled, else ``t``'s own."""
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


# --- dispatch (called by fraqat.quant for CUDA tensors) ------------------------------------


def dispatch_fake_quantize(x: torch.Tensor, bits: float, *, granularity: str, axis: int,
                           group_size: int, symmetric: bool) -> torch.Tensor | None:
    """Fused ``fake_quantize`` or None (caller runs the reference)."""
    if torch.compiler.is_compiling():
        return None  # being traced by the "compile" backend: that is the reference formula
    backend = current_backend()
    if backend == "reference":
        return None
    if backend == "compile":
        with use_backend("reference"):  # inductor's fallback to eager must not re-dispatch
            return fake_quantize_compiled(x, bits, granularity=granularity, axis=axis,
                                          group_size=group_size, symmetric=symmetric)
    return fake_quantize_triton(x, bits, granularity=granularity, axis=axis,
                                group_size=group_size, symmetric=symmetric)


def dispatch_quantize_with_qparams(rows: torch.Tensor, qp: QParams) -> torch.Tensor | None:
    """Fused per-tensor ``quantize_with_qparams`` (fixed scale, fp32 rows) or None."""
    if (torch.compiler.is_compiling() or rows.dtype != torch.float32
            or qp.scale.numel() != 1 or qp.zero_point.numel() != 1 or qp.scale.requires_grad):
        return None  # a learned scale needs the LSQ gradient: reference
    backend = current_backend()
    if backend == "reference":
        return None
    if backend == "compile":
        with use_backend("reference"):
            return _compiled_qwq()(rows, qp)
    return fake_quantize_activation(rows, qp)


# --- torch.compile of the reference formula ---------------------------------------------------


def fake_quantize_compiled(x: torch.Tensor, bits: float, *, granularity: str = "tensor",
                           axis: int = 0, group_size: int = 64,
                           symmetric: bool = True) -> torch.Tensor:
    """``fake_quantize`` through inductor: the reference math, fused by the compiler.

    Bits are validated here and enter the graph as fp32 tensors, so a new bit-width
    (progressive schedule) reuses the compiled graph instead of recompiling.
    """
    bits = check_bits(bits)
    quant._check_granularity(x, granularity, axis, group_size)
    consts = _consts(bits, symmetric, x.device)
    if granularity == "tensor" or axis % x.dim() == 0:
        # a 2-D view, not the Parameter: dynamo keeps parameter shapes static, and 4-D conv
        # weights' size-1 dims would each add a recompile; (rows, row length) needs none
        x2 = x.reshape(x.shape[0] if x.dim() else 1, -1)
        y = _compiled_formula()(x2, *consts, symmetric, granularity, 0, group_size)
        return y.reshape(x.shape)
    return _compiled_formula()(x.view_as(x), *consts, symmetric, granularity, axis, group_size)


@functools.lru_cache(maxsize=64)
def _consts(bits: float, symmetric: bool,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = round(qmax(bits))
    vals = (qmax(bits), -n, n) if symmetric else (2.0**bits - 1.0, 0, round(2.0**bits - 1.0))
    return tuple(torch.full((), float(v), dtype=torch.float32, device=device) for v in vals)


def _formula(x: torch.Tensor, qconst: torch.Tensor, qlo: torch.Tensor, qhi: torch.Tensor,
             symmetric: bool, granularity: str, axis: int, group_size: int) -> torch.Tensor:
    """quant.compute_qparams + quantize_with_qparams, with bit-width constants as tensors."""
    rows = quant._group_view(x, granularity, axis, group_size).float()
    d = rows.detach()
    if symmetric:
        scale = (d.abs().amax(dim=1, keepdim=True) / qconst).clamp_min(quant._EPS)
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        lo = d.amin(dim=1, keepdim=True).clamp_max(0.0)
        hi = d.amax(dim=1, keepdim=True).clamp_min(0.0)
        scale = ((hi - lo) / qconst).clamp_min(quant._EPS)
        zp = torch.round(-lo * (1.0 / scale)).to(torch.int32)
    out = quant.quantize_with_qparams(rows, QParams(scale, zp, qlo, qhi))  # tensor bounds
    return quant._ungroup(out.to(x.dtype), x, granularity, axis)


@functools.cache
def _compiled_formula():
    return torch.compile(_formula)


@functools.cache
def _compiled_qwq():
    return torch.compile(quant.quantize_with_qparams)


# --- Triton entry points --------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Launch geometry and quantizer constants of one call."""

    mode: str  # "tensor" (global abs-max), "group" (groups in registers), "given" (fixed qp)
    symmetric: bool
    qconst: float  # q_max(b) (symmetric) or 2**b - 1 (asymmetric), rounded to fp32
    qlo: float
    qhi: float
    n: int = 0  # elements
    n_groups: int = 1
    row_len: int = 0  # L: values per slice along axis 0
    group: int = 0  # values per group (the last group of a slice may be shorter)
    groups_per_row: int = 1
    block_g: int = 1  # groups per program
    g_pad: int = 1  # group length rounded up to a power of two
    even: bool = False  # every group full and a power of two: unmasked, vectorized rows


def _f32(v: float) -> float:
    return torch.tensor(v, dtype=torch.float32).item()


@functools.lru_cache(maxsize=4096)  # one per layer shape and bit-width: no per-call host work
def _plan(shape: tuple[int, ...], bits: float, granularity: str, group_size: int,
          symmetric: bool) -> _Plan | None:
    numel = math.prod(shape)
    if symmetric:
        n = round(qmax(bits))
        consts = {"qconst": _f32(qmax(bits)), "qlo": float(-n), "qhi": float(n)}
    else:
        consts = {"qconst": _f32(2.0**bits - 1.0), "qlo": 0.0, "qhi": float(round(2.0**bits - 1.0))}
    if granularity == "tensor":
        return _Plan("tensor", symmetric, n=numel, **consts)
    row_len = numel // shape[0]
    group = row_len if granularity == "channel" else min(group_size, row_len)
    if row_len == 0 or group > MAX_GROUP:
        return None
    gpr = -(-row_len // group)
    g_pad = triton.next_power_of_2(group)
    return _Plan("group", symmetric, n=numel, n_groups=shape[0] * gpr, row_len=row_len,
                 group=group, groups_per_row=gpr, block_g=max(1, _BLOCK // g_pad), g_pad=g_pad,
                 even=row_len % group == 0 and group == g_pad, **consts)


def _usable(x: torch.Tensor) -> bool:
    return (triton is not None and (x.is_cuda or _INTERPRET) and x.dtype in DTYPES
            and 0 < x.numel() <= 2**30)


def fake_quantize_triton(x: torch.Tensor, bits: float, *, granularity: str = "tensor",
                         axis: int = 0, group_size: int = 64, symmetric: bool = True,
                         out_dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """Triton ``fake_quantize``; None where unsupported (groups over ``MAX_GROUP``, fp64).

    ``out_dtype`` (default ``x.dtype``) lets a caller under autocast get the bf16 copy that
    the matmul would make anyway, without an fp32 round trip; the values are those of
    ``fake_quantize(x).to(out_dtype)``.
    """
    bits = check_bits(bits)
    quant._check_granularity(x, granularity, axis, group_size)
    if not _usable(x):
        return None
    if granularity != "tensor" and axis % x.dim() != 0:  # slices along axis 0: one copy
        y = fake_quantize_triton(x.movedim(axis, 0), bits, granularity=granularity,
                                 group_size=group_size, symmetric=symmetric, out_dtype=out_dtype)
        return None if y is None else y.movedim(0, axis)
    plan = _plan(tuple(x.shape), bits, granularity, group_size, symmetric)
    if plan is None:
        return None
    return _FakeQuant.apply(x, plan, None, out_dtype or x.dtype)


def fake_quantize_activation(x: torch.Tensor, qp: QParams,
                             out_dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """``quantize_with_qparams(x.float(), qp).to(out_dtype)`` with a fixed per-tensor scale.

    ``x`` may be bf16/fp16 (computed in fp32 as the reference does after ``x.float()``).
    """
    if not _usable(x) or qp.scale.numel() != 1 or qp.scale.requires_grad:
        return None
    plan = _Plan("given", symmetric=False, qconst=0.0, qlo=float(qp.quant_min),
                 qhi=float(qp.quant_max), n=x.numel())
    qtensors = (qp.scale.detach().reshape(1).float(), qp.zero_point.reshape(1))
    return _FakeQuant.apply(x, plan, qtensors, out_dtype or torch.float32)


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, plan: _Plan, qtensors, out_dtype):
        xc = x.contiguous() if plan.mode == "group" else _dense(x)
        y = torch.empty_like(xc, dtype=out_dtype)  # same strides: channels_last stays so
        with _on(x.device):
            state = _launch_forward(xc, y, plan, qtensors)
        # "given": the 1-byte mask replaces x; else x (a weight: alive anyway) + group flags
        ctx.save_for_backward(None if plan.mode == "given" else xc, *state)
        ctx.plan, ctx.x_dtype, ctx.strides = plan, x.dtype, y.stride()
        return y

    @staticmethod
    def backward(ctx, g):
        x, *state = ctx.saved_tensors
        if g.stride() != ctx.strides:  # the kernels index g, dx and y alike, element by element
            g = torch.empty_strided(g.shape, ctx.strides, dtype=g.dtype,
                                    device=g.device).copy_(g)
        dx = torch.empty_like(g, dtype=ctx.x_dtype)
        with _on(g.device):
            _launch_backward(g, x, dx, ctx.plan, state)
        return dx, None, None, None


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` if its elements fill one block of memory (contiguous or channels_last), else a copy.

    Elementwise modes index that block directly, so a channels_last activation keeps its layout
    and the next convolution keeps cuDNN's fast channels_last (e.g. depthwise) kernels.
    """
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


def _on(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type != "cuda" or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def _launch_forward(x: torch.Tensor, y: torch.Tensor, p: _Plan,
                    qtensors: tuple[torch.Tensor, torch.Tensor] | None) -> list[torch.Tensor]:
    dev = x.device
    if p.mode == "group":
        scale = torch.empty(p.n_groups, dtype=torch.float32, device=dev)
        zp = torch.empty_like(scale)
        flags = torch.empty(p.n_groups, dtype=torch.int8, device=dev)
        grid = (triton.cdiv(p.n_groups, p.block_g),)
        _group_fwd_kernel[grid](x, y, scale, zp, flags, p.n_groups, p.row_len, p.group,
                                p.groups_per_row, p.qconst, p.qlo, p.qhi, SYMMETRIC=p.symmetric,
                                BLOCK_G=p.block_g, G_PAD=p.g_pad, EVEN=p.even,
                                num_warps=_warps(p))
        return [scale, zp, flags]
    grid = (triton.cdiv(p.n, _BLOCK),)
    if p.mode == "given":
        scale, zp = qtensors
        stats = scale  # unused
        aux = torch.empty(p.n, dtype=torch.uint8, device=dev)
    else:
        buf = torch.zeros(3, dtype=torch.int32, device=dev)  # -min, max (float bits), clamped
        stats, aux = buf[:2], buf[2:]
        scale = zp = stats  # computed from stats in the kernels
        _tensor_stats_kernel[(min(grid[0], 4 * _sm_count(dev)),)](x, stats, p.n, BLOCK=_BLOCK,
                                                       num_warps=8)
    _tensor_fwd_kernel[grid](x, y, stats, scale, zp, aux, p.n, p.qconst, p.qlo, p.qhi,
                             SYMMETRIC=p.symmetric, GIVEN=p.mode == "given", BLOCK=_BLOCK,
                             num_warps=8)
    return [stats, scale, zp, aux]


def _launch_backward(g: torch.Tensor, x: torch.Tensor | None, dx: torch.Tensor, p: _Plan,
                     state: list[torch.Tensor]) -> None:
    if p.mode == "group":
        scale, zp, flags = state
        grid = (triton.cdiv(p.n_groups, p.block_g),)
        _group_bwd_kernel[grid](g, x, dx, scale, zp, flags, p.n_groups, p.row_len, p.group,
                                p.groups_per_row, p.qlo, p.qhi, BLOCK_G=p.block_g,
                                G_PAD=p.g_pad, EVEN=p.even, num_warps=_warps(p))
        return
    stats, scale, zp, aux = state
    _tensor_bwd_kernel[(triton.cdiv(p.n, _BLOCK),)](
        g, g if x is None else x, dx, stats, scale, zp, aux, p.n, p.qconst, p.qlo, p.qhi,
        SYMMETRIC=p.symmetric, GIVEN=p.mode == "given", BLOCK=_BLOCK, num_warps=8)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if (
        device.type == "cuda") else 4


def _warps(p: _Plan) -> int:
    return min(16, max(4, p.block_g * p.g_pad // 512))


# --- Triton kernels -------------------------------------------------------------------------

if triton is not None:
    try:
        from triton.language.extra import libdevice
    except ImportError:  # older Triton layouts
        libdevice = None
    _NATIVE_RINT = libdevice is not None and not _INTERPRET

    if _NATIVE_RINT:
        @triton.jit
        def _rint(v):
            return libdevice.rint(v)  # round half to even, like torch.round
    else:
        @triton.jit
        def _rint(v):  # round half to even via fp32's 2**23 (the interpreter lacks libdevice)
            a = tl.abs(v)
            r = tl.where(a < 8388608.0, (a + 8388608.0) - 8388608.0, a)
            return tl.where(v < 0, -r, r)

    @triton.jit
    def _scale_zp(nlo, hi, qconst, SYMMETRIC: tl.constexpr):
        """scale, 1/scale, zero point from -min(x,0) and max(x,0): compute_qparams' math."""
        if SYMMETRIC:
            scale = tl.maximum(tl.math.div_rn(tl.maximum(nlo, hi), qconst), 1.1920928955078125e-07)
            inv = tl.math.div_rn(1.0, scale)
            zp = tl.zeros_like(scale)
        else:
            scale = tl.maximum(tl.math.div_rn(hi + nlo, qconst), 1.1920928955078125e-07)
            inv = tl.math.div_rn(1.0, scale)
            zp = _rint(nlo * inv)
        return scale, inv, zp

    @triton.jit
    def _quant(x, scale, inv, zp, qlo, qhi):
        """(clamp(round(x * (1/s)) + z) - z) * s, and whether the code was inside the range."""
        q = _rint(x * inv) + zp
        inside = (q >= qlo) & (q <= qhi)
        return (tl.minimum(tl.maximum(q, qlo), qhi) - zp) * scale, inside

    @triton.jit
    def _tensor_qparams(stats_ptr, scale_ptr, zp_ptr, qconst, SYMMETRIC: tl.constexpr,
                        GIVEN: tl.constexpr):
        if GIVEN:
            scale = tl.load(scale_ptr)
            inv = tl.math.div_rn(1.0, scale)
            zp = tl.load(zp_ptr).to(tl.float32)
        else:
            nlo = tl.load(stats_ptr).to(tl.float32, bitcast=True)
            hi = tl.load(stats_ptr + 1).to(tl.float32, bitcast=True)
            scale, inv, zp = _scale_zp(nlo, hi, qconst, SYMMETRIC)
        return scale, inv, zp

    @triton.jit
    def _tensor_stats_kernel(x_ptr, stats_ptr, n, BLOCK: tl.constexpr):
        """Grid-wide -min(x,0), max(x,0): non-negative floats order like their int32 bits."""
        lo = tl.zeros([BLOCK], tl.float32)
        hi = tl.zeros([BLOCK], tl.float32)
        for start in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
            lo = tl.minimum(lo, x)
            hi = tl.maximum(hi, x)
        tl.atomic_max(stats_ptr, (-tl.min(lo, 0)).to(tl.int32, bitcast=True))
        tl.atomic_max(stats_ptr + 1, tl.max(hi, 0).to(tl.int32, bitcast=True))

    @triton.jit
    def _tensor_fwd_kernel(x_ptr, y_ptr, stats_ptr, scale_ptr, zp_ptr, aux_ptr, n, qconst, qlo,
                           qhi, SYMMETRIC: tl.constexpr, GIVEN: tl.constexpr,
                           BLOCK: tl.constexpr):
        scale, inv, zp = _tensor_qparams(stats_ptr, scale_ptr, zp_ptr, qconst, SYMMETRIC, GIVEN)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < n
        x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        y, inside = _quant(x, scale, inv, zp, qlo, qhi)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=valid)
        if GIVEN:
            tl.store(aux_ptr + offs, inside.to(tl.uint8), mask=valid)
        else:
            if tl.max((valid & (inside == 0)).to(tl.int32), 0) > 0:
                tl.atomic_max(aux_ptr, 1)

    @triton.jit
    def _tensor_bwd_kernel(g_ptr, x_ptr, dx_ptr, stats_ptr, scale_ptr, zp_ptr, aux_ptr, n,
                           qconst, qlo, qhi, SYMMETRIC: tl.constexpr, GIVEN: tl.constexpr,
                           BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < n
        g = tl.load(g_ptr + offs, mask=valid, other=0.0)
        if GIVEN:
            inside = tl.load(aux_ptr + offs, mask=valid, other=1) != 0
        else:
            clamped = tl.load(aux_ptr) != 0  # x is read only if something clamped
            scale, inv, zp = _tensor_qparams(stats_ptr, scale_ptr, zp_ptr, qconst, SYMMETRIC,
                                             GIVEN)
            x = tl.load(x_ptr + offs, mask=valid & clamped, other=0.0).to(tl.float32)
            _, inside = _quant(x, scale, inv, zp, qlo, qhi)
            inside = inside | (clamped == 0)
        dx = tl.where(inside, g.to(tl.float32), 0.0)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=valid)

    @triton.jit
    def _group_offsets(n_groups, row_len, group, gpr, BLOCK_G: tl.constexpr,
                       G_PAD: tl.constexpr, EVEN: tl.constexpr):
        gid = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
        gvalid = gid < n_groups
        e = tl.arange(0, G_PAD)
        if EVEN:  # groups tile the tensor: a mask constant along rows keeps loads vectorized
            valid = gvalid[:, None] & (e[None, :] < G_PAD)
            offs = gid.to(tl.int64)[:, None] * G_PAD + e[None, :]
        else:
            col0 = (gid % gpr) * group
            glen = tl.minimum(group, row_len - col0)
            valid = gvalid[:, None] & (e[None, :] < glen[:, None])
            offs = (gid // gpr).to(tl.int64)[:, None] * row_len + col0[:, None] + e[None, :]
        return gid, gvalid, offs, valid

    @triton.jit
    def _group_fwd_kernel(x_ptr, y_ptr, scale_ptr, zp_ptr, flag_ptr, n_groups, row_len, group,
                          gpr, qconst, qlo, qhi, SYMMETRIC: tl.constexpr, BLOCK_G: tl.constexpr,
                          G_PAD: tl.constexpr, EVEN: tl.constexpr):
        gid, gvalid, offs, valid = _group_offsets(n_groups, row_len, group, gpr, BLOCK_G, G_PAD,
                                                  EVEN)
        x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        nlo = tl.maximum(-tl.min(x, 1), 0.0)  # padding zeros change neither, as in the reference
        hi = tl.maximum(tl.max(x, 1), 0.0)
        scale, inv, zp = _scale_zp(nlo, hi, qconst, SYMMETRIC)
        y, inside = _quant(x, scale[:, None], inv[:, None], zp[:, None], qlo, qhi)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=valid)
        tl.store(scale_ptr + gid, scale, mask=gvalid)
        tl.store(zp_ptr + gid, zp, mask=gvalid)
        clamped = tl.max((valid & (inside == 0)).to(tl.int32), 1)
        tl.store(flag_ptr + gid, clamped.to(tl.int8), mask=gvalid)

    @triton.jit
    def _group_bwd_kernel(g_ptr, x_ptr, dx_ptr, scale_ptr, zp_ptr, flag_ptr, n_groups, row_len,
                          group, gpr, qlo, qhi, BLOCK_G: tl.constexpr, G_PAD: tl.constexpr,
                          EVEN: tl.constexpr):
        gid, gvalid, offs, valid = _group_offsets(n_groups, row_len, group, gpr, BLOCK_G, G_PAD,
                                                  EVEN)
        clamped = tl.load(flag_ptr + gid, mask=gvalid, other=0) != 0
        scale = tl.load(scale_ptr + gid, mask=gvalid, other=1.0)
        zp = tl.load(zp_ptr + gid, mask=gvalid, other=0.0)
        x = tl.load(x_ptr + offs, mask=valid & clamped[:, None], other=0.0).to(tl.float32)
        _, inside = _quant(x, scale[:, None], tl.math.div_rn(1.0, scale)[:, None], zp[:, None],
                           qlo, qhi)
        g = tl.load(g_ptr + offs, mask=valid, other=0.0)
        dx = tl.where(inside | (clamped[:, None] == 0), g.to(tl.float32), 0.0)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=valid)
