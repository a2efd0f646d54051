"""Fractional-bit fake quantization (FraQAT, arXiv 2510.14823).

A bit-width ``b`` may be any real number in [2, 16]. For the symmetric "narrow range"
quantizer of a group with absolute maximum ``m``::

    q_max(b) = 2**(b-1) - 1        # b=4 -> 7, b=4.5 -> 10.31, b=5 -> 15
    s        = m / q_max(b)        # step
    n        = round(q_max(b))     # largest integer code
    W_b      = s * clamp(round(W / s), -n, n)

so b=4.5 gives 21 levels, between 15 (b=4) and 31 (b=5), and the grid coarsens smoothly as
``b`` falls. The asymmetric "wide range" variant spreads ``2**b - 1`` steps over
[min(W, 0), max(W, 0)]. At integer ``b`` both equal torch's ``fake_quantize_*_affine``
exactly (the same ``x * (1/s)`` rounding is used).

Gradients are straight-through inside the clamp range and zero outside, like torch's
fake-quant. With a detached scale that is plain STE; passing a scale that requires grad
gives the LSQ (learned step size) gradient for free.

This module is the pure reference: no GPU code, no dispatch. The layers call the custom ops
of :mod:`fraqat.quant.ops` (CPU: the ``reference_*`` functions below; CUDA:
:mod:`fraqat.quant.kernels`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Granularity = Literal["tensor", "channel", "group"]
GRANULARITIES = ("tensor", "channel", "group")
MIN_BITS, MAX_BITS = 2.0, 16.0
_EPS = torch.finfo(torch.float32).eps


def check_bits(bits: object, name: str = "bits") -> float:
    """Return ``bits`` as a float, or raise ValueError naming the bad value."""
    if (isinstance(bits, bool) or not isinstance(bits, (int, float))
            or not math.isfinite(bits) or not MIN_BITS <= bits <= MAX_BITS):
        raise ValueError(f"{name}={bits!r} is not allowed (allowed: a real number in "
                         f"[{MIN_BITS:g}, {MAX_BITS:g}])")
    return float(bits)


def qmax(bits: float) -> float:
    """Real-valued largest code of the symmetric grid: 2**(b-1) - 1."""
    return 2.0 ** (bits - 1) - 1.0


def code_range(bits: float, symmetric: bool = True) -> tuple[int, int]:
    """Integer code range: [-round(q_max(b)), round(q_max(b))] or [0, round(2**b - 1)]."""
    if symmetric:
        n = round(qmax(bits))
        return -n, n
    return 0, round(2.0**bits - 1.0)


def grid(bits: float, symmetric: bool = True) -> tuple[float, int, int]:
    """``(divisor, qmin, qmax)`` of a data-range quantizer: ``s = range / divisor``.

    The divisor is ``q_max(b)`` (symmetric: range = abs-max) or ``2**b - 1`` (asymmetric:
    range = max(x, 0) - min(x, 0)); the code range is :func:`code_range`.
    """
    return (qmax(bits) if symmetric else 2.0**bits - 1.0, *code_range(bits, symmetric))


def grid_tensor(bits: float, symmetric: bool = True,
                device: torch.device | str | None = None) -> torch.Tensor:
    """:func:`grid` as a (3,) fp32 tensor: what the ops read, so a bit change is a copy."""
    return torch.tensor(grid(bits, symmetric), dtype=torch.float32, device=device)


def num_levels(bits: float, symmetric: bool = True) -> int:
    """Number of distinct codes: 2*round(q_max)+1 (symmetric) or round(2**b-1)+1."""
    qmin, qmax_ = code_range(bits, symmetric)
    return qmax_ - qmin + 1


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one fake-quantizer, shaped to broadcast against its input."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    quant_min: int
    quant_max: int


def _group_view(x: torch.Tensor, granularity: str, axis: int, group_size: int) -> torch.Tensor:
    """Reshape ``x`` so that each row of the result is one quantization group."""
    if granularity == "tensor":
        return x.reshape(1, -1)
    if granularity == "channel":
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)
    rows = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    pad = (-rows.shape[1]) % group_size
    if pad:  # zero padding changes neither the absolute max nor min(.,0)/max(.,0)
        rows = torch.nn.functional.pad(rows, (0, pad))
    return rows.reshape(-1, group_size)


def _ungroup(rows: torch.Tensor, like: torch.Tensor, granularity: str, axis: int) -> torch.Tensor:
    if granularity == "tensor":
        return rows.reshape(like.shape)
    moved = like.movedim(axis, 0)
    flat = rows.reshape(moved.shape[0], -1)[:, : moved[0].numel()]
    return flat.reshape(moved.shape).movedim(0, axis)


def compute_qparams(x: torch.Tensor, bits: float, *, symmetric: bool = True,
                    granularity: str = "tensor", axis: int = 0,
                    group_size: int = 64) -> QParams:
    """Scale/zero point from the data range of each group (one per row of the group view)."""
    bits = check_bits(bits)
    _check_granularity(x, granularity, axis, group_size)
    rows = _group_view(x.detach().float(), granularity, axis, group_size)
    divisor, qmin, qmax_ = grid(bits, symmetric)
    scale, zero_point = _row_qparams(rows, torch.tensor(divisor, dtype=torch.float32), symmetric)
    return QParams(scale, zero_point.to(torch.int32), qmin, qmax_)


def _row_qparams(rows: torch.Tensor, divisor: torch.Tensor,
                 symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero point as float) of fp32 ``rows``; ``divisor`` from :func:`grid`."""
    if symmetric:
        scale = (rows.abs().amax(dim=1, keepdim=True) / divisor).clamp_min(_EPS)
        return scale, torch.zeros_like(scale)
    lo = rows.amin(dim=1, keepdim=True).clamp_max(0.0)
    hi = rows.amax(dim=1, keepdim=True).clamp_min(0.0)
    scale = ((hi - lo) / divisor).clamp_min(_EPS)
    return scale, torch.round(-lo * (1.0 / scale))


def quantize_with_qparams(rows: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Fake-quantize grouped ``rows`` with given qparams; STE for x, LSQ for a learned scale.

    ``y = (clamp(round(x/s) + z, qmin, qmax) - z) * s``. The gradient wrt ``x`` is exactly 1
    where ``qmin <= round(x/s) + z <= qmax`` (bounds included, torch's fake-quant mask) and 0
    elsewhere; wrt ``s`` it is LSQ's ``(code - z) - x/s`` inside, ``code - z`` outside.
    """
    scale, zp = qp.scale, qp.zero_point.to(rows.dtype)
    scaled = rows.detach() * (1.0 / scale.detach())  # x * (1/s), the rounding torch uses
    q = torch.round(scaled) + zp
    out = (torch.clamp(q, qp.quant_min, qp.quant_max) - zp) * scale
    if torch.is_grad_enabled() and (rows.requires_grad or scale.requires_grad):
        # zero-valued term carrying the STE/LSQ gradients (torch.clamp's own gradient is 0 AT
        # the bounds, which would freeze every value that rounds to the extreme codes)
        inside = (q >= qp.quant_min) & (q <= qp.quant_max)
        t = torch.where(inside, rows - scaled * scale, 0.0)
        out = out + (t - t.detach())
    return out


def fake_quantize(x: torch.Tensor, bits: float, *, granularity: Granularity = "tensor",
                  axis: int = 0, group_size: int = 64, symmetric: bool = True) -> torch.Tensor:
    """Fake-quantize ``x`` at a real bit-width ``bits`` in [2, 16] (see module docstring).

    ``granularity``: one scale for the whole tensor, one per slice along ``axis``
    ("channel"), or one per ``group_size`` consecutive values of each slice ("group").
    This is the reference in plain PyTorch; :func:`fraqat.quant.ops.fake_quantize` is the same
    function through the custom op (fused on CUDA).
    """
    qp = compute_qparams(x, bits, symmetric=symmetric, granularity=granularity, axis=axis,
                         group_size=group_size)
    rows = _group_view(x, granularity, axis, group_size)
    out = quantize_with_qparams(rows.float(), qp).to(x.dtype)
    return _ungroup(out, x, granularity, axis)


def integer_codes(x: torch.Tensor, bits: float, *, granularity: Granularity = "tensor",
                  axis: int = 0, group_size: int = 64,
                  symmetric: bool = True) -> tuple[torch.Tensor, QParams]:
    """The integer codes ``clamp(round(x/s)+z)`` (int32, shape of ``x``) and their qparams.

    ``qp.scale * (codes - qp.zero_point)`` in the group view equals ``fake_quantize(x)``;
    this is what an exporter stores.
    """
    qp = compute_qparams(x, bits, symmetric=symmetric, granularity=granularity, axis=axis,
                         group_size=group_size)
    rows = _group_view(x.detach().float(), granularity, axis, group_size)
    codes = torch.clamp(torch.round(rows * (1.0 / qp.scale)) + qp.zero_point.float(),
                        qp.quant_min, qp.quant_max)
    return _ungroup(codes, x, granularity, axis).to(torch.int32), qp


def _check_granularity(x: torch.Tensor, granularity: str, axis: int, group_size: int) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r} is not allowed (allowed: "
                         f"{', '.join(GRANULARITIES)})")
    if granularity != "tensor" and not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis={axis} is out of range for a tensor of {x.dim()} dims")
    if granularity == "group" and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < 1):
        raise ValueError(f"group_size={group_size!r} is not allowed (allowed: an integer >= 1)")


# --- the reference behind the custom ops of fraqat.quant.ops (same signatures) --------------------


def reference_fake_quant(x: torch.Tensor, grid_t: torch.Tensor, granularity: str,
                         group_size: int, symmetric: bool, out_dtype: torch.dtype
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Data-range fake-quant along axis 0: ``(y, scale, zero_point, clamped)`` per group.

    ``grid_t`` is :func:`grid_tensor`; scale and zero point are fp32 of shape (groups,),
    ``clamped`` (int32) says whether any value of the group fell outside the code range,
    which is all the backward needs besides ``x``. (The zero padding of a short last group
    codes to the zero point, which is inside the range.)
    """
    rows = _group_view(x.detach().float(), granularity, 0, group_size)
    scale, zp = _row_qparams(rows, grid_t[0], symmetric)
    q = torch.round(rows * (1.0 / scale)) + zp
    inside = (q >= grid_t[1]) & (q <= grid_t[2])
    y = (torch.clamp(q, grid_t[1], grid_t[2]) - zp) * scale
    clamped = (~inside).any(dim=1).to(torch.int32)
    y = _ungroup(y, x, granularity, 0).to(out_dtype).contiguous()
    return y, scale.flatten(), zp.flatten(), clamped


def reference_fake_quant_backward(g: torch.Tensor, x: torch.Tensor, grid_t: torch.Tensor,
                                  scale: torch.Tensor, zp: torch.Tensor, clamped: torch.Tensor,
                                  granularity: str, group_size: int) -> torch.Tensor:
    """Straight-through gradient of :func:`reference_fake_quant`: ``g`` inside the range, 0 out."""
    rows = _group_view(x.detach().float(), granularity, 0, group_size)
    q = torch.round(rows * (1.0 / scale[:, None])) + zp[:, None]
    inside = (q >= grid_t[1]) & (q <= grid_t[2]) | (clamped[:, None] == 0)
    mask = _ungroup(inside, x, granularity, 0)
    return torch.where(mask, g, 0.0).to(x.dtype)


def reference_fake_quant_given(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                               qmin: int, qmax_: int, out_dtype: torch.dtype
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake-quant with fixed qparams: ``(y, inside)`` with ``inside`` a uint8 mask like ``x``."""
    xf = x.detach().float()
    zp = zero_point.float()
    q = torch.round(xf * (1.0 / scale.detach())) + zp
    inside = (q >= qmin) & (q <= qmax_)
    y = (torch.clamp(q, qmin, qmax_) - zp) * scale.detach()
    # the layout of torch.empty_like(x), which the op's fake implementation promises
    return (torch.empty_like(x, dtype=out_dtype).copy_(y),
            torch.empty_like(x, dtype=torch.uint8).copy_(inside))

