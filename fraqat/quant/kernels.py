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
It imports nothing from fraqat but its kernels (:mod:`fraqat.quant.triton_kernels`): the ops
pass tensors in and take tensors out, and every entry point returns None where it cannot help.
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

    from fraqat.quant.triton_kernels import (
        _group_bwd_kernel,
        _group_fwd_kernel,
        _masked_grad_kernel,
        _tensor_bwd_kernel,
        _tensor_fwd_kernel,
        _tensor_stats_kernel,
    )
except ImportError:
    triton = None

BACKENDS = ("triton", "reference")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_GROUP = 16384  # a bigger group does not fit one program's registers: reference path
_BLOCK = 4096  # elements per program of the elementwise kernels
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (debugging)
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
    return (triton is not None and current_backend() == "triton" and (x.is_cuda or INTERPRET)
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
                                      SYMMETRIC=symmetric, GIVEN=False, BLOCK=_BLOCK, MASK=0,
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


MASKS = {"none": 0, "bytes": 1, "bits": 2}  # how fake_quant_given returns the in-range mask


def fake_quant_given(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                     qmax: int, out_dtype: torch.dtype, mask: str = "bytes"):
    """``fraqat::fake_quant_given`` for a per-tensor scale: ``(y, inside)`` or None.

    ``inside``: "bytes" a uint8 tensor like ``x``; "bits" packed 8 values per byte, bit
    ``i % 8`` of byte ``i // 8`` for the ``i``-th value in ``y``'s memory order (for
    :func:`masked_grad_bits`); "none" an empty tensor (no gradient needed: no mask written).
    """
    if not _usable(x) or scale.numel() != 1 or zero_point.numel() != 1:
        return None
    xc = _dense(x)
    y = torch.empty_like(xc, dtype=out_dtype)  # same strides: channels_last stays so
    n = x.numel()
    inside = (torch.empty_like(xc, dtype=torch.uint8) if mask == "bytes" else
              torch.empty(-(-n // 8) if mask == "bits" else 0, dtype=torch.uint8,
                          device=x.device))
    s, z = _on_device(scale.detach(), x.device, torch.float32), _on_device(zero_point, x.device,
                                                                          torch.int32)
    with _on(x.device):
        _tensor_fwd_kernel[(triton.cdiv(n, _BLOCK),)](
            xc, y, s, s, s, z, inside, n, float(qmin), float(qmax), SYMMETRIC=False,
            GIVEN=True, BLOCK=_BLOCK, MASK=MASKS[mask], num_warps=8)
    return y, inside


def masked_grad_bits(g: torch.Tensor, bits: torch.Tensor, shape: tuple[int, ...],
                     stride: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``where(inside, g, 0)`` in ``dtype``, laid out as ``(shape, stride)`` (the forward
    output's dense layout), ``inside`` packed as :func:`fake_quant_given` with "bits" wrote it."""
    if g.stride() != tuple(stride):
        g = torch.empty_strided(shape, stride, dtype=g.dtype, device=g.device).copy_(g)
    dx = torch.empty_strided(shape, stride, dtype=dtype, device=g.device)
    with _on(g.device):
        _masked_grad_kernel[(triton.cdiv(g.numel(), _BLOCK),)](g, bits, dx, g.numel(),
                                                               BLOCK=_BLOCK, BITS=True,
                                                               num_warps=8)
    return dx


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
                                                               BITS=False, num_warps=8)
    return dx


def _on_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as the kernels read a one-value tensor (a pointer): no copy, no op when it already
    is one (the common case: every eager call pays for each op it launches)."""
    return t if t.dtype == dtype and t.device == device else t.to(device, dtype)


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
