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
    ok = isinstance(bits, (int, float)) and not isinstance(bits, bool)
    if not ok or not math.isfinite(bits) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{name}={bits!r} is not allowed (allowed: a real number in "
                         f"[{MIN_BITS:g}, {MAX_BITS:g}])")
    return float(bits)


def qmax(bits: float) -> float:
    """Real-valued largest code of the symmetric grid: 2**(b-1) - 1."""
    return 2.0 ** (bits - 1) - 1.0


def num_levels(bits: float, symmetric: bool = True) -> int:
    """Number of distinct codes: 2*round(q_max)+1 (symmetric) or round(2**b-1)+1."""
    return 2 * round(qmax(bits)) + 1 if symmetric else round(2.0**bits - 1.0) + 1


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
    if symmetric:
        n = round(qmax(bits))
        m = rows.abs().amax(dim=1, keepdim=True)
        scale = (m / qmax(bits)).clamp_min(_EPS)
        return QParams(scale, torch.zeros_like(scale, dtype=torch.int32), -n, n)
    levels = 2.0**bits - 1.0
    lo = rows.amin(dim=1, keepdim=True).clamp_max(0.0)
    hi = rows.amax(dim=1, keepdim=True).clamp_min(0.0)
    scale = ((hi - lo) / levels).clamp_min(_EPS)
    zero_point = torch.round(-lo * (1.0 / scale)).to(torch.int32)
    return QParams(scale, zero_point, 0, round(levels))


def quantize_with_qparams(rows: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Fake-quantize grouped ``rows`` with given qparams; STE for x, LSQ for a learned scale.

    ``y = (clamp(round(x/s) + z, qmin, qmax) - z) * s``. The gradient wrt ``x`` is exactly 1
    where ``qmin <= round(x/s) + z <= qmax`` (bounds included, torch's fake-quant mask) and 0
    elsewhere; wrt ``s`` it is LSQ's ``(code - z) - x/s`` inside, ``code - z`` outside.
    """
    if rows.is_cuda and not torch.compiler.is_compiling():  # fused GPU path, same results
        from fraqat.kernels import dispatch_quantize_with_qparams
        out = dispatch_quantize_with_qparams(rows, qp)
        if out is not None:
            return out
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
    On CUDA a fused kernel (:mod:`fraqat.kernels`) gives the same values and gradients.
    """
    if x.is_cuda and not torch.compiler.is_compiling():
        from fraqat.kernels import dispatch_fake_quantize
        out = dispatch_fake_quantize(x, bits, granularity=granularity, axis=axis,
                                     group_size=group_size, symmetric=symmetric)
        if out is not None:
            return out
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
