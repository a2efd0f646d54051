"""fraqat.quant.activations.ActQuantizer: passthrough, observe/freeze, state-dict round trip."""

from __future__ import annotations

import pytest
import torch

from fraqat.quant.activations import ActQuantizer


def _acts(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 16, 32, generator=g) * 3.0 + 1.0


def _calibrated(bits: float = 8, **kw) -> ActQuantizer:
    q = ActQuantizer(bits, **kw)
    q.observe()
    for seed in range(3):
        assert torch.equal(q(_acts(seed)), _acts(seed))  # observing passes through
    q.freeze()
    return q


def test_passthrough_before_calibration_and_when_disabled() -> None:
    x = _acts()
    assert ActQuantizer(8)(x) is x
    assert ActQuantizer(None)(x) is x
    off = ActQuantizer(None)
    off.observe()
    off(x)
    off.freeze()  # nothing observed, nothing to freeze: still a passthrough
    assert off(x) is x


def test_freeze_asymmetric_8bit_scale_and_levels() -> None:
    q = _calibrated(8)
    xs = torch.cat([_acts(s).flatten() for s in range(3)])
    lo, hi = xs.min(), xs.max()
    assert lo < 0 < hi
    assert torch.equal(q.min_val, lo) and torch.equal(q.max_val, hi)
    assert torch.equal(q.scale.detach(), (hi - lo) / 255)
    assert int(q.zero_point) == int(torch.round(-lo / q.scale.detach()))
    assert q.quant_range == (0, 255) and bool(q.calibrated)
    y = q(_acts(7) * 2)  # also values outside the calibrated range
    assert len(torch.unique(y)) <= 256
    ref = torch.fake_quantize_per_tensor_affine(_acts(7) * 2, float(q.scale), int(q.zero_point),
                                                0, 255)
    assert torch.equal(y, ref)


def test_freeze_symmetric() -> None:
    q = _calibrated(8, symmetric=True)
    xs = torch.cat([_acts(s).flatten() for s in range(3)])
    assert q.quant_range == (-127, 127) and int(q.zero_point) == 0
    assert torch.isclose(q.scale.detach(), xs.abs().max() / 127)
    assert len(torch.unique(q(_acts(1)))) <= 255


def test_freeze_without_data_raises() -> None:
    q = ActQuantizer(8)
    q.observe()
    with pytest.raises(RuntimeError, match="freeze"):
        q.freeze()


def test_state_dict_round_trip_restores_ready_flag() -> None:
    q = _calibrated(8)
    x = _acts(3)
    fresh = ActQuantizer(8)
    assert fresh(x) is x  # not calibrated yet
    fresh.load_state_dict(q.state_dict())
    assert fresh._ready
    assert torch.equal(fresh(x), q(x)) and not torch.equal(fresh(x), x)


def test_learned_scale_gets_gradient() -> None:
    q = _calibrated(8, learn=True)
    assert q.scale.requires_grad
    x = _acts(4).requires_grad_(True)
    q(x).pow(2).sum().backward()
    assert q.scale.grad is not None and torch.isfinite(q.scale.grad).all()
    assert float(q.scale.grad.abs()) > 0
    assert x.grad is not None and set(x.grad.flatten().tolist()) != {0.0}


def test_bad_bits() -> None:
    for bad in (1, float("nan"), "8", True):
        with pytest.raises(ValueError, match="act_bits="):
            ActQuantizer(bad)  # type: ignore[arg-type]


def test_preserves_dtype() -> None:
    q = _calibrated(8)
    y = q(_acts(2).to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
