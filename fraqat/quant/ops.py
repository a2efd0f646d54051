"""The one dispatch point of fake quantization: PyTorch custom ops (``torch.library``).

Every quantized layer (:mod:`fraqat.quant.layers`) and activation quantizer
(:mod:`fraqat.quant.activations`) calls these ops; each has one name and two implementations:

- ``fraqat::fake_quant`` (weights: scale from each group's data range) with its backward
  ``fraqat::fake_quant_backward`` (straight-through: ``dx = g`` inside the code range),
- ``fraqat::fake_quant_given`` (activations: a fixed, possibly learned, per-tensor scale)
  with its backward ``fraqat::masked_grad`` (``dx = g`` where the saved 1-byte mask is set),

CPU = the pure reference of :mod:`fraqat.quant.core`; CUDA = the fused Triton kernels of
:mod:`fraqat.quant.kernels` (the reference where Triton is missing or a case is unsupported; both
give the same bits). Being opaque ops with fake (meta) implementations, they trace under
``torch.compile(fullgraph=True)`` and CUDA graphs as single nodes.

The layers do not go through the dispatcher, though: :func:`fake_quantize_grid` and
:func:`fake_quantize_given` apply ``torch.autograd.Function`` s that call the same two
implementations directly. Why: a custom op's Python layer (schema handling, the autograd
wrapper) cost 0.5-0.65 ms of host time per eager call on the H200's host against 0.09 ms for an
aten op, which made the eager W4A8 step host-bound. On CUDA the activation path saves its in-
range mask packed 8 per byte (1/16 of a bf16 activation, not 1/2). Under ``torch.compile`` the
functions run the reference's aten formula with its gradients from the formula itself (no
autograd.Function to trace), which inductor fuses with the neighbouring elementwise work (no
opaque node, no extra pass); on CUDA its Triton code divides approximately unless inductor's
IEEE-division option is on (``TORCHINDUCTOR_EMULATE_DIVISION_ROUNDING=1`` where this torch has
it), so a compiled step may round a value at a code boundary the other way.

The bit-width enters as a tensor, :func:`fraqat.quant.core.grid_tensor` = (divisor, qmin,
qmax), not as a Python number: a new bit-width is a copy into that tensor, so compiled graphs
are not recompiled and captured CUDA graphs read the new value at their next replay.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from fraqat.quant import kernels
from fraqat.quant.core import (
    QParams,
    _check_granularity,
    _group_view,
    _row_qparams,
    _ungroup,
    check_bits,
    grid_tensor,
    quantize_with_qparams,
    reference_fake_quant,
    reference_fake_quant_backward,
    reference_fake_quant_given,
)


def fake_quantize(x: Tensor, bits: float, *, granularity: str = "tensor", axis: int = 0,
                  group_size: int = 64, symmetric: bool = True,
                  out_dtype: torch.dtype | None = None) -> Tensor:
    """:func:`fraqat.quant.core.fake_quantize` through the custom op (fused on CUDA), same values.

    ``out_dtype`` (default ``x.dtype``) returns ``fake_quantize(x).to(out_dtype)`` without
    an intermediate copy in ``x.dtype`` (under autocast: the bf16 weight the matmul needs).
    """
    bits = check_bits(bits)
    _check_granularity(x, granularity, axis, group_size)
    return fake_quantize_grid(x, _grid(bits, symmetric, x.device), granularity=granularity,
                              axis=axis, group_size=group_size, symmetric=symmetric,
                              out_dtype=out_dtype)


@functools.lru_cache(maxsize=256)
def _grid(bits: float, symmetric: bool, device: torch.device) -> Tensor:
    """One read-only grid tensor per (bits, device): no host-to-device copy per call, so the
    functional form is CUDA-graph capturable after its first call."""
    return grid_tensor(bits, symmetric, device)


def fake_quantize_grid(x: Tensor, grid: Tensor, *, granularity: str = "tensor", axis: int = 0,
                       group_size: int = 64, symmetric: bool = True,
                       out_dtype: torch.dtype | None = None) -> Tensor:
    """:func:`fake_quantize` with the bit-width given as ``grid_tensor(bits, symmetric)``."""
    if granularity != "tensor" and axis % x.dim() != 0:  # the ops group along axis 0
        y = fake_quantize_grid(x.movedim(axis, 0), grid, granularity=granularity,
                               group_size=group_size, symmetric=symmetric, out_dtype=out_dtype)
        return y.movedim(0, axis)
    if torch.compiler.is_compiling():
        return _weight_formula(x, grid, granularity, group_size, symmetric, out_dtype or x.dtype)
    return _WeightFakeQuant.apply(x, grid, granularity, group_size, symmetric,
                                  out_dtype or x.dtype)


def fake_quantize_given(x: Tensor, qp: QParams, out_dtype: torch.dtype | None = None) -> Tensor:
    """``quantize_with_qparams(x.float(), qp).to(out_dtype)``: STE for ``x``, LSQ for a scale
    that requires grad; ``out_dtype`` defaults to ``x.dtype``."""
    if torch.compiler.is_compiling():
        return quantize_with_qparams(x.float(), qp).to(out_dtype or x.dtype)
    # decided here: inside an autograd.Function's forward, grad mode is always off
    grad = torch.is_grad_enabled() and (x.requires_grad or qp.scale.requires_grad)
    return _GivenFakeQuant.apply(x, qp.scale, qp.zero_point, qp.quant_min, qp.quant_max,
                                 out_dtype or x.dtype, grad)


def _weight_formula(x: Tensor, grid: Tensor, granularity: str, group_size: int,
                    symmetric: bool, out_dtype: torch.dtype) -> Tensor:
    """The reference's arithmetic in aten ops with its gradients from the formula
    (:func:`fraqat.quant.core.quantize_with_qparams`): what ``torch.compile`` traces and fuses."""
    rows = _group_view(x.float(), granularity, 0, group_size)
    scale, zp = _row_qparams(rows.detach(), grid[0], symmetric)
    y = quantize_with_qparams(rows, QParams(scale, zp, grid[1], grid[2]))  # type: ignore[arg-type]
    return _ungroup(y, x, granularity, 0).to(out_dtype)


def compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype the next matmul runs in: autocast's if enabled, else ``t``'s own."""
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


def num_groups(shape: tuple[int, ...] | torch.Size, granularity: str, group_size: int) -> int:
    """Groups of a tensor quantized along axis 0 (the last group of a slice may be short)."""
    if granularity == "tensor":
        return 1
    row_len = 1
    for d in shape[1:]:
        row_len *= d
    return shape[0] if granularity == "channel" else shape[0] * -(-row_len // group_size)


# --- fraqat::fake_quant ----------------------------------------------------------------------


@torch.library.custom_op("fraqat::fake_quant", mutates_args=())
def _fake_quant(x: Tensor, grid: Tensor, granularity: str, group_size: int, symmetric: bool,
                out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return reference_fake_quant(x, grid, granularity, group_size, symmetric, out_dtype)


@_fake_quant.register_kernel("cuda")
def _fake_quant_cuda(x, grid, granularity, group_size, symmetric, out_dtype):
    out = kernels.fake_quant(x, grid, granularity, group_size, symmetric, out_dtype)
    return out if out is not None else reference_fake_quant(x, grid, granularity, group_size,
                                                             symmetric, out_dtype)


@_fake_quant.register_fake
def _fake_quant_fake(x, grid, granularity, group_size, symmetric, out_dtype):
    n = num_groups(x.shape, granularity, group_size)
    return (x.new_empty(x.shape, dtype=out_dtype), x.new_empty(n, dtype=torch.float32),
            x.new_empty(n, dtype=torch.float32), x.new_empty(n, dtype=torch.int32))


@torch.library.custom_op("fraqat::fake_quant_backward", mutates_args=())
def _fake_quant_backward(g: Tensor, x: Tensor, grid: Tensor, scale: Tensor, zp: Tensor,
                         clamped: Tensor, granularity: str, group_size: int) -> Tensor:
    return reference_fake_quant_backward(g, x, grid, scale, zp, clamped, granularity,
                                         group_size)


@_fake_quant_backward.register_kernel("cuda")
def _fake_quant_backward_cuda(g, x, grid, scale, zp, clamped, granularity, group_size):
    dx = kernels.fake_quant_backward(g, x, grid, scale, zp, clamped, granularity, group_size)
    return dx if dx is not None else reference_fake_quant_backward(
        g, x, grid, scale, zp, clamped, granularity, group_size)


@_fake_quant_backward.register_fake
def _fake_quant_backward_fake(g, x, grid, scale, zp, clamped, granularity, group_size):
    return x.new_empty(x.shape)


def _fake_quant_setup(ctx, inputs, output) -> None:
    x, grid, granularity, group_size, _, _ = inputs
    _, scale, zp, clamped = output
    ctx.save_for_backward(x, grid, scale, zp, clamped)  # x: a weight, alive anyway
    ctx.granularity, ctx.group_size = granularity, group_size
    ctx.mark_non_differentiable(scale, zp, clamped)
    ctx.set_materialize_grads(False)  # no zero-filled grads for the outputs nobody uses


def _fake_quant_grad(ctx, gy, *_):
    if gy is None:
        return None, None, None, None, None, None
    x, grid, scale, zp, clamped = ctx.saved_tensors
    dx = _fake_quant_backward(gy, x, grid, scale, zp, clamped, ctx.granularity, ctx.group_size)
    return dx, None, None, None, None, None


_fake_quant.register_autograd(_fake_quant_grad, setup_context=_fake_quant_setup)


# --- fraqat::fake_quant_given ----------------------------------------------------------------


@torch.library.custom_op("fraqat::fake_quant_given", mutates_args=())
def _given(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int,
           out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return reference_fake_quant_given(x, scale, zero_point, qmin, qmax, out_dtype)


@_given.register_kernel("cuda")
def _given_cuda(x, scale, zero_point, qmin, qmax, out_dtype):
    out = kernels.fake_quant_given(x, scale, zero_point, qmin, qmax, out_dtype)
    return out if out is not None else reference_fake_quant_given(x, scale, zero_point, qmin,
                                                                  qmax, out_dtype)


@_given.register_fake
def _given_fake(x, scale, zero_point, qmin, qmax, out_dtype):
    return torch.empty_like(x, dtype=out_dtype), torch.empty_like(x, dtype=torch.uint8)


def _given_setup(ctx, inputs, output) -> None:
    x, scale, zero_point, qmin, qmax, _ = inputs
    inside = output[1]
    ctx.mark_non_differentiable(inside)
    ctx.set_materialize_grads(False)  # else autograd zero-fills a mask-sized uint8 grad
    ctx.x_dtype, ctx.qmin, ctx.qmax = x.dtype, qmin, qmax
    if scale.requires_grad:  # LSQ needs x; a frozen scale keeps only the 1-byte mask
        ctx.save_for_backward(inside, x, scale, zero_point)
    else:
        ctx.save_for_backward(inside)


def _masked_grad_reference(g: Tensor, inside: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty_like(inside, dtype=dtype).copy_(torch.where(inside.bool(), g, 0.0))


@torch.library.custom_op("fraqat::masked_grad", mutates_args=())
def _masked_grad(g: Tensor, inside: Tensor, dtype: torch.dtype) -> Tensor:
    return _masked_grad_reference(g, inside, dtype)


@_masked_grad.register_kernel("cuda")
def _masked_grad_cuda(g, inside, dtype):
    dx = kernels.masked_grad(g, inside, dtype)
    return dx if dx is not None else _masked_grad_reference(g, inside, dtype)


@_masked_grad.register_fake
def _masked_grad_fake(g, inside, dtype):
    return torch.empty_like(inside, dtype=dtype)


def _given_grad(ctx, gy, _):
    if gy is None:
        return None, None, None, None, None, None
    inside, *lsq = ctx.saved_tensors
    dx = _masked_grad(gy, inside, ctx.x_dtype)
    if not lsq:
        return dx, None, None, None, None, None
    x, scale, zero_point = lsq
    return dx, _lsq_scale_grad(gy, x, scale, zero_point, ctx.qmin, ctx.qmax, inside), None, \
        None, None, None


def _lsq_scale_grad(gy: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int,
                    qmax: int, inside: Tensor) -> Tensor:
    """LSQ: ``d y / d s = (code - z) - x/s`` inside the range, ``(code - z)`` outside."""
    scaled = x.detach().float() * (1.0 / scale.detach())
    zp = zero_point.float()
    code = torch.clamp(torch.round(scaled) + zp, qmin, qmax)
    dy_ds = (code - zp) - inside * scaled
    return (gy.float() * dy_ds).sum_to_size(scale.shape).to(scale.dtype)


_given.register_autograd(_given_grad, setup_context=_given_setup)


# --- the layers' path: autograd.Functions over the same implementations -----------------------


def _fast(x: Tensor) -> bool:
    """Call the Triton kernels directly: eager CUDA (or CPU under Triton's interpreter); the
    kernels refuse what they cannot do, and the reference runs instead."""
    return x.is_cuda or kernels.INTERPRET


class _WeightFakeQuant(torch.autograd.Function):
    """``fraqat::fake_quant`` without the dispatcher: saves the weight (alive anyway), its
    per-group scale / zero point / clamped flag, no quantized copy."""

    @staticmethod
    def forward(ctx, x, grid, granularity, group_size, symmetric, out_dtype):
        out = kernels.fake_quant(x, grid, granularity, group_size, symmetric,
                                 out_dtype) if _fast(x) else None
        if out is None:
            out = reference_fake_quant(x, grid, granularity, group_size, symmetric, out_dtype)
        y, scale, zp, clamped = out
        ctx.save_for_backward(x, grid, scale, zp, clamped)
        ctx.granularity, ctx.group_size = granularity, group_size
        return y

    @staticmethod
    def backward(ctx, gy):
        x, grid, scale, zp, clamped = ctx.saved_tensors
        dx = kernels.fake_quant_backward(gy, x, grid, scale, zp, clamped, ctx.granularity,
                                         ctx.group_size) if _fast(x) else None
        if dx is None:
            dx = reference_fake_quant_backward(gy, x, grid, scale, zp, clamped, ctx.granularity,
                                               ctx.group_size)
        return dx, None, None, None, None, None


class _GivenFakeQuant(torch.autograd.Function):
    """``fraqat::fake_quant_given`` without the dispatcher; on CUDA the saved mask is packed
    to one bit per value, and no mask is written at all when nothing needs a gradient."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, out_dtype, grad):
        # LSQ's scale gradient reads the mask as values: bytes then
        mask = ("bytes" if scale.requires_grad else "bits") if grad else "none"
        out = kernels.fake_quant_given(x, scale, zero_point, qmin, qmax, out_dtype,
                                       mask=mask) if _fast(x) else None
        ctx.packed = out is not None and mask == "bits"
        if out is None:
            out = reference_fake_quant_given(x, scale, zero_point, qmin, qmax, out_dtype)
        y, inside = out
        ctx.x_dtype, ctx.qmin, ctx.qmax = x.dtype, qmin, qmax
        if ctx.packed:  # the bits follow y's memory order, which dx takes
            ctx.layout = (tuple(y.shape), y.stride())
        if scale.requires_grad:  # LSQ needs x; a frozen scale keeps only the mask
            ctx.save_for_backward(inside, x, scale, zero_point)
        else:
            ctx.save_for_backward(inside)
        return y

    @staticmethod
    def backward(ctx, gy):
        inside, *lsq = ctx.saved_tensors
        if ctx.packed:
            dx = kernels.masked_grad_bits(gy, inside, *ctx.layout, ctx.x_dtype)
        else:
            dx = kernels.masked_grad(gy, inside, ctx.x_dtype) if _fast(gy) else None
            if dx is None:
                dx = _masked_grad_reference(gy, inside, ctx.x_dtype)
        if not lsq:
            return dx, None, None, None, None, None, None
        x, scale, zero_point = lsq
        dscale = _lsq_scale_grad(gy, x, scale, zero_point, ctx.qmin, ctx.qmax, inside)
        return dx, dscale, None, None, None, None, None
