"""INT-b activation fake-quantizer with a min/max observer (per tensor, as in W4A8).

Life cycle: ``observe`` (collect the running min/max over calibration batches, pass the input
through unchanged) -> ``freeze`` (fix scale and zero point from the observed range) ->
quantize every forward. With ``learn=True`` the frozen scale becomes a parameter trained by
the LSQ gradient of :func:`fraqat.quant.core.quantize_with_qparams` (through
:func:`fraqat.quant.ops.fake_quantize_given`, the one dispatch point).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from fraqat.quant import ops
from fraqat.quant.core import QParams, check_bits, code_range, qmax

_EPS = torch.finfo(torch.float32).eps


class ActQuantizer(nn.Module):
    """Per-tensor activation fake-quantizer; ``bits=None`` is an exact passthrough."""

    min_val: torch.Tensor  # buffers (typed for the checker)
    max_val: torch.Tensor
    calibrated: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, bits: float | None = 8, *, symmetric: bool = False, learn: bool = False):
        super().__init__()
        self.bits = None if bits is None else check_bits(bits, "act_bits")
        self.symmetric = symmetric
        self.learn = learn
        self.observing = False
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.register_buffer("calibrated", torch.tensor(False))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.scale = nn.Parameter(torch.tensor(1.0), requires_grad=learn)
        self._ready = False  # host copy of `calibrated`: no device sync in forward

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.calibrated)

    @property
    def quant_range(self) -> tuple[int, int]:
        """Integer code range: [-n, n] (symmetric, narrow) or [0, 2**b - 1]."""
        if self.bits is None:
            raise ValueError("a passthrough quantizer (bits=None) has no code range")
        return code_range(self.bits, self.symmetric)

    def observe(self) -> None:
        self.observing = True

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix scale/zero point from the observed range (which always includes 0)."""
        self.observing = False
        if self.bits is None:
            return
        if not torch.isfinite(self.min_val):
            raise RuntimeError("ActQuantizer.freeze() before any calibration batch was observed")
        lo, hi = self.min_val.clamp_max(0.0), self.max_val.clamp_min(0.0)
        qmin, qmax_ = self.quant_range
        if self.symmetric:
            scale = torch.maximum(-lo, hi) / qmax(self.bits)
            zero_point = torch.tensor(0)
        else:
            scale = (hi - lo).clamp_min(_EPS) / (qmax_ - qmin)
            zero_point = torch.round(-lo / scale.clamp_min(_EPS))
        self.scale.copy_(scale.clamp_min(_EPS))
        self.zero_point.copy_(zero_point.to(torch.int32))
        self.calibrated.fill_(True)
        self._ready = True

    def qparams(self) -> QParams:
        qmin, qmax_ = self.quant_range
        scale = self.scale if self.learn else self.scale.detach()
        return QParams(scale.abs().clamp_min(_EPS), self.zero_point, qmin, qmax_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return x
        if self.observing:
            with torch.no_grad():
                self.min_val.copy_(torch.minimum(self.min_val, x.detach().min().float()))
                self.max_val.copy_(torch.maximum(self.max_val, x.detach().max().float()))
            return x
        if not self._ready:
            return x  # not calibrated yet: behave as full precision
        return ops.fake_quantize_given(x, self.qparams(), out_dtype=ops.compute_dtype(x))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, learn={self.learn}"


def quantizer_readers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules that quantize their input (fake-quant or converted layers), in module order."""
    for name, mod in model.named_modules():
        if isinstance(getattr(mod, "input_quantizer", None), ActQuantizer):
            yield name, mod
