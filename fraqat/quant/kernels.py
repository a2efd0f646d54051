"""Fused GPU fake quantization (Triton): the CUDA implementations of :mod:`fraqat.quant.ops`.

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
- activations keep their layout (channels_last stays so: cuDNN's depthwise convolutions
  need it; a transposed view is not copied), and ``out_dtype`` lets a caller under autocast
  get bf16 without an fp32 round trip.

The bit-width is read from the device tensor ``grid`` = (divisor, qmin, qmax) of
:func:`fraqat.quant.core.grid_tensor`, so a captured CUDA graph follows bit changes. Same
arithmetic as the reference (IEEE divisions via ``div_rn``, ``x * (1/s)``, round half to
even, same clamp bounds), so results are bit-identical to it; tests/test_kernels.py checks it.

Backend, per call: :func:`use_backend` if active, else ``$FRAQAT_FUSED``, else "triton" where
Triton imports; "reference" turns the kernels off (the ops then run the PyTorch reference).
It imports nothing from fraqat (the ops pass tensors in and take tensors out) and every entry
point returns None where it cannot help.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

try:  # GPU machines only; the ops fall back to the PyTorch reference without it
    import triton
    import triton.language as tl
except ImportError:
    triton = None

BACKENDS = ("triton", "reference")
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
    return "reference" if triton is None else name


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


# --- entry points (called by fraqat.quant.ops' CUDA implementations) ---------------------------


@dataclass(frozen=True)
class _Plan:
    """Launch geometry of one tensor shape and granularity."""

    mode: str  # "tensor" (global abs-max) or "group" (groups in registers)
    n: int  # elements
    n_groups: int = 1
    row_len: int = 0  # L: values per slice along axis 0
    group: int = 0  # values per group (the last group of a slice may be shorter)
    groups_per_row: int = 1
    block_g: int = 1  # groups per program
    g_pad: int = 1  # group length rounded up to a power of two
    even: bool = False  # every group full and a power of two: unmasked, vectorized rows


@functools.lru_cache(maxsize=4096)  # one per layer shape: no per-call host work
def _plan(shape: tuple[int, ...], granularity: str, group_size: int) -> _Plan | None:
    numel = math.prod(shape)
    if granularity == "tensor":
        return _Plan("tensor", n=numel)
    row_len = numel // shape[0]
    group = row_len if granularity == "channel" else min(group_size, row_len)
    if row_len == 0 or group > MAX_GROUP:
        return None
    gpr = -(-row_len // group)
    g_pad = triton.next_power_of_2(group)
    return _Plan("group", n=numel, n_groups=shape[0] * gpr, row_len=row_len, group=group,
                 groups_per_row=gpr, block_g=max(1, _BLOCK // g_pad), g_pad=g_pad,
                 even=row_len % group == 0 and group == g_pad)


def _usable(x: torch.Tensor) -> bool:
    return (triton is not None and current_backend() == "triton" and (x.is_cuda or _INTERPRET)
            and x.dtype in DTYPES and 0 < x.numel() <= 2**30)


def fake_quant(x: torch.Tensor, grid: torch.Tensor, granularity: str, group_size: int,
               symmetric: bool, out_dtype: torch.dtype):
    """``fraqat::fake_quant``: ``(y, scale, zero_point, clamped)`` or None (unsupported)."""
    plan = _plan(tuple(x.shape), granularity, group_size) if _usable(x) else None
    if plan is None or grid.device != x.device:
        return None
    dev = x.device
    xc = x.contiguous()  # a weight: already is
    y = torch.empty_like(xc, dtype=out_dtype)
    scale = torch.empty(plan.n_groups, dtype=torch.float32, device=dev)
    zp = torch.empty_like(scale)
    with _on(dev):
        if plan.mode == "group":
            clamped = torch.empty(plan.n_groups, dtype=torch.int32, device=dev)
            _group_fwd_kernel[(triton.cdiv(plan.n_groups, plan.block_g),)](
                xc, y, grid, scale, zp, clamped, plan.n_groups, plan.row_len, plan.group,
                plan.groups_per_row, SYMMETRIC=symmetric, BLOCK_G=plan.block_g,
                G_PAD=plan.g_pad, EVEN=plan.even, num_warps=_warps(plan))
            return y, scale, zp, clamped
        # one zeroed buffer: clamped flag (returned: offset 0, aligned as inductor requires),
        # then -min(x,0) and max(x,0) as float bits
        buf = torch.zeros(3, dtype=torch.int32, device=dev)
        clamped, stats = buf[:1], buf[1:]
        blocks = triton.cdiv(plan.n, _BLOCK)
        _tensor_stats_kernel[(min(blocks, 4 * _sm_count(dev)),)](xc, stats, plan.n,
                                                                 BLOCK=_BLOCK, num_warps=8)
        _tensor_fwd_kernel[(blocks,)](xc, y, stats, grid, scale, zp, clamped, plan.n, 0.0, 0.0,
                                      SYMMETRIC=symmetric, GIVEN=False, BLOCK=_BLOCK,
                                      num_warps=8)
    return y, scale, zp, clamped


def fake_quant_backward(g: torch.Tensor, x: torch.Tensor, grid: torch.Tensor,
                        scale: torch.Tensor, zp: torch.Tensor, clamped: torch.Tensor,
                        granularity: str, group_size: int) -> torch.Tensor | None:
    """``fraqat::fake_quant_backward``: ``dx`` (dtype and layout of ``x``) or None."""
    plan = _plan(tuple(x.shape), granularity, group_size) if _usable(x) else None
    if plan is None or g.dtype not in DTYPES or grid.device != x.device:
        return None
    xc = x.contiguous()
    if g.stride() != xc.stride():  # the kernels index g, dx and x alike, element by element
        g = torch.empty_strided(g.shape, xc.stride(), dtype=g.dtype, device=g.device).copy_(g)
    dx = torch.empty_like(xc)
    with _on(x.device):
        if plan.mode == "group":
            _group_bwd_kernel[(triton.cdiv(plan.n_groups, plan.block_g),)](
                g, xc, dx, grid, scale, zp, clamped, plan.n_groups, plan.row_len, plan.group,
                plan.groups_per_row, BLOCK_G=plan.block_g, G_PAD=plan.g_pad, EVEN=plan.even,
                num_warps=_warps(plan))
        else:
            _tensor_bwd_kernel[(triton.cdiv(plan.n, _BLOCK),)](
                g, xc, dx, grid, scale, zp, clamped, plan.n, BLOCK=_BLOCK, num_warps=8)
    return dx


def fake_quant_given(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                     qmax: int, out_dtype: torch.dtype):
    """``fraqat::fake_quant_given`` for a per-tensor scale: ``(y, inside)`` or None."""
    if not _usable(x) or scale.numel() != 1 or zero_point.numel() != 1:
        return None
    xc = _dense(x)
    y = torch.empty_like(xc, dtype=out_dtype)  # same strides: channels_last stays so
    inside = torch.empty_like(xc, dtype=torch.uint8)
    s = scale.detach().reshape(1).to(x.device, torch.float32)
    z = zero_point.reshape(1).to(x.device, torch.int32)
    with _on(x.device):
        _tensor_fwd_kernel[(triton.cdiv(x.numel(), _BLOCK),)](
            xc, y, s, s, s, z, inside, x.numel(), float(qmin), float(qmax), SYMMETRIC=False,
            GIVEN=True, BLOCK=_BLOCK, num_warps=8)
    return y, inside


def masked_grad(g: torch.Tensor, inside: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """``fraqat::masked_grad``: ``where(inside, g, 0)`` in ``dtype`` and ``inside``'s layout.

    One vectorized pass (PyTorch's ``g * mask`` of bf16 by uint8 runs its slow mixed-dtype
    kernel: 3x this time per call on Sana-600M's activations)."""
    if not _usable(g) or dtype not in DTYPES or inside.dtype != torch.uint8:
        return None
    m = _dense(inside)
    if g.stride() != m.stride():
        g = torch.empty_strided(g.shape, m.stride(), dtype=g.dtype, device=g.device).copy_(g)
    dx = torch.empty_like(m, dtype=dtype)
    with _on(g.device):
        _masked_grad_kernel[(triton.cdiv(g.numel(), _BLOCK),)](g, m, dx, g.numel(), BLOCK=_BLOCK,
                                                               num_warps=8)
    return dx


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` if its elements fill one block of memory in any dimension order, else a dense copy
    in ``x``'s dimension order: the layout ``torch.empty_like(x)`` gives, which is what the ops'
    fake implementations promise to ``torch.compile``.

    Elementwise kernels index that block directly, so a channels_last activation keeps its layout
    and the next convolution keeps cuDNN's fast channels_last (e.g. depthwise) kernels.
    """
    expected = 1
    dims = sorted((st, n) for st, n in zip(x.stride(), x.shape, strict=True) if n != 1)
    for stride, size in dims:
        if stride != expected:
            return torch.empty_like(x).copy_(x)
        expected *= size
    return x


def _on(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type != "cuda" or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


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
        """scale, 1/scale, zero point from -min(x,0) and max(x,0): the reference's math."""
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
    def _tensor_fwd_kernel(x_ptr, y_ptr, stats_ptr, grid_ptr, scale_ptr, zp_ptr, aux_ptr, n,
                           given_lo, given_hi, SYMMETRIC: tl.constexpr, GIVEN: tl.constexpr,
                           BLOCK: tl.constexpr):
        """GIVEN: fixed scale/zp, writes the in-range mask to aux. Else: scale from the
        stats, written by program 0, and aux[0] = 1 if anything clamped."""
        if GIVEN:
            scale = tl.load(scale_ptr)
            inv = tl.math.div_rn(1.0, scale)
            zp = tl.load(zp_ptr).to(tl.float32)
            qlo = given_lo
            qhi = given_hi
        else:
            qlo = tl.load(grid_ptr + 1)
            qhi = tl.load(grid_ptr + 2)
            nlo = tl.load(stats_ptr).to(tl.float32, bitcast=True)
            hi = tl.load(stats_ptr + 1).to(tl.float32, bitcast=True)
            scale, inv, zp = _scale_zp(nlo, hi, tl.load(grid_ptr), SYMMETRIC)
            if tl.program_id(0) == 0:
                tl.store(scale_ptr, scale)
                tl.store(zp_ptr, zp)
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
    def _tensor_bwd_kernel(g_ptr, x_ptr, dx_ptr, grid_ptr, scale_ptr, zp_ptr, clamped_ptr, n,
                           BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < n
        g = tl.load(g_ptr + offs, mask=valid, other=0.0)
        clamped = tl.load(clamped_ptr) != 0  # x is read only if something clamped
        scale = tl.load(scale_ptr)
        x = tl.load(x_ptr + offs, mask=valid & clamped, other=0.0).to(tl.float32)
        _, inside = _quant(x, scale, tl.math.div_rn(1.0, scale), tl.load(zp_ptr),
                           tl.load(grid_ptr + 1), tl.load(grid_ptr + 2))
        dx = tl.where(inside | (clamped == 0), g.to(tl.float32), 0.0)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=valid)

    @triton.jit
    def _masked_grad_kernel(g_ptr, m_ptr, dx_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < n
        g = tl.load(g_ptr + offs, mask=valid, other=0.0)
        inside = tl.load(m_ptr + offs, mask=valid, other=0) != 0
        tl.store(dx_ptr + offs, tl.where(inside, g.to(tl.float32), 0.0).to(
            dx_ptr.dtype.element_ty), mask=valid)

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
    def _group_fwd_kernel(x_ptr, y_ptr, grid_ptr, scale_ptr, zp_ptr, flag_ptr, n_groups,
                          row_len, group, gpr, SYMMETRIC: tl.constexpr, BLOCK_G: tl.constexpr,
                          G_PAD: tl.constexpr, EVEN: tl.constexpr):
        gid, gvalid, offs, valid = _group_offsets(n_groups, row_len, group, gpr, BLOCK_G, G_PAD,
                                                  EVEN)
        x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        nlo = tl.maximum(-tl.min(x, 1), 0.0)  # padding zeros change neither, as in the reference
        hi = tl.maximum(tl.max(x, 1), 0.0)
        scale, inv, zp = _scale_zp(nlo, hi, tl.load(grid_ptr), SYMMETRIC)
        y, inside = _quant(x, scale[:, None], inv[:, None], zp[:, None], tl.load(grid_ptr + 1),
                           tl.load(grid_ptr + 2))
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=valid)
        tl.store(scale_ptr + gid, scale, mask=gvalid)
        tl.store(zp_ptr + gid, zp, mask=gvalid)
        clamped = tl.max((valid & (inside == 0)).to(tl.int32), 1)
        tl.store(flag_ptr + gid, clamped, mask=gvalid)

    @triton.jit
    def _group_bwd_kernel(g_ptr, x_ptr, dx_ptr, grid_ptr, scale_ptr, zp_ptr, flag_ptr, n_groups,
                          row_len, group, gpr, BLOCK_G: tl.constexpr, G_PAD: tl.constexpr,
                          EVEN: tl.constexpr):
        gid, gvalid, offs, valid = _group_offsets(n_groups, row_len, group, gpr, BLOCK_G, G_PAD,
                                                  EVEN)
        clamped = tl.load(flag_ptr + gid, mask=gvalid, other=0) != 0
        scale = tl.load(scale_ptr + gid, mask=gvalid, other=1.0)
        zp = tl.load(zp_ptr + gid, mask=gvalid, other=0.0)
        x = tl.load(x_ptr + offs, mask=valid & clamped[:, None], other=0.0).to(tl.float32)
        _, inside = _quant(x, scale[:, None], tl.math.div_rn(1.0, scale)[:, None], zp[:, None],
                           tl.load(grid_ptr + 1), tl.load(grid_ptr + 2))
        g = tl.load(g_ptr + offs, mask=valid, other=0.0)
        dx = tl.where(inside | (clamped[:, None] == 0), g.to(tl.float32), 0.0)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=valid)
