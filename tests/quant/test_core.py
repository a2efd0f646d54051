"""fraqat.quant.core: exactness against torch's fake-quant, fractional level counts, STE/LSQ."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fraqat.quant.core import (
    QParams,
    compute_qparams,
    fake_quantize,
    integer_codes,
    num_levels,
    qmax,
    quantize_with_qparams,
)

FAST = settings(max_examples=40, deadline=None)


def _data(shape: tuple[int, ...], seed: int, spread: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * spread + 0.3 * spread


def _torch_per_channel(x: torch.Tensor, qp: QParams, axis: int) -> torch.Tensor:
    return torch.fake_quantize_per_channel_affine(
        x, qp.scale.flatten(), qp.zero_point.flatten(), axis % x.dim(), qp.quant_min,
        qp.quant_max)


# --- 1. exact equality with torch's integer fake-quant ------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_per_tensor_equals_torch(bits: int, symmetric: bool, seed: int) -> None:
    x = _data((17, 33), seed, spread=10.0 ** (seed - 1))
    qp = compute_qparams(x, bits, symmetric=symmetric)
    if symmetric:
        n = 2 ** (bits - 1) - 1
        assert (qp.quant_min, qp.quant_max) == (-n, n) and int(qp.zero_point) == 0
    else:
        assert (qp.quant_min, qp.quant_max) == (0, 2**bits - 1)
    ref = torch.fake_quantize_per_tensor_affine(x, float(qp.scale), int(qp.zero_point),
                                                qp.quant_min, qp.quant_max)
    assert torch.equal(fake_quantize(x, bits, symmetric=symmetric), ref)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel_equals_torch(bits: int, symmetric: bool, axis: int) -> None:
    x = _data((6, 5, 7), seed=axis + 10)
    x[1] *= 100.0  # channels with very different ranges
    x[2] = 0.0     # an all-zero slice (scale clamped to eps)
    qp = compute_qparams(x, bits, symmetric=symmetric, granularity="channel", axis=axis)
    got = fake_quantize(x, bits, granularity="channel", axis=axis, symmetric=symmetric)
    assert torch.equal(got, _torch_per_channel(x, qp, axis))


@given(seed=st.integers(0, 2**16), rows=st.integers(1, 6), cols=st.integers(1, 40),
       bits=st.sampled_from([4, 8]), symmetric=st.booleans(),
       log_spread=st.floats(-4, 4))
@FAST
def test_per_channel_equals_torch_property(seed: int, rows: int, cols: int, bits: int,
                                           symmetric: bool, log_spread: float) -> None:
    x = _data((rows, cols), seed, spread=10.0**log_spread)
    for axis in (0, 1):
        qp = compute_qparams(x, bits, symmetric=symmetric, granularity="channel", axis=axis)
        got = fake_quantize(x, bits, granularity="channel", axis=axis, symmetric=symmetric)
        assert torch.equal(got, _torch_per_channel(x, qp, axis))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("shape", "axis", "group"), [
    ((8, 64), 0, 16),      # divides the row
    ((8, 50), 0, 16),      # does not divide the row: zero padding of the last group
    ((4, 3, 3, 3), 0, 8),  # conv weight, row of 27
    ((10, 12), 1, 4),      # groups along the other axis
])
def test_per_group_equals_torch(bits: int, symmetric: bool, shape: tuple[int, ...], axis: int,
                                group: int) -> None:
    x = _data(shape, seed=len(shape) + group)
    got = fake_quantize(x, bits, granularity="group", axis=axis, group_size=group,
                        symmetric=symmetric)
    # reference: per-channel fake-quant of the (-1, group) view of the zero-padded rows
    rows = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    pad = (-rows.shape[1]) % group
    padded = torch.nn.functional.pad(rows, (0, pad)).reshape(-1, group)
    qp = compute_qparams(x, bits, symmetric=symmetric, granularity="group", axis=axis,
                         group_size=group)
    assert qp.scale.shape == (padded.shape[0], 1)
    ref = _torch_per_channel(padded, qp, 0).reshape(rows.shape[0], -1)[:, : rows.shape[1]]
    ref = ref.reshape(x.movedim(axis, 0).shape).movedim(0, axis)
    assert torch.equal(got, ref)


def test_integer_codes_reconstruct_fake_quant() -> None:
    x = _data((8, 40), seed=3)
    for symmetric in (True, False):
        codes, qp = integer_codes(x, 4.5, granularity="channel", symmetric=symmetric)
        assert codes.dtype == torch.int32
        assert int(codes.min()) >= qp.quant_min and int(codes.max()) <= qp.quant_max
        recon = (codes.float() - qp.zero_point.float()) * qp.scale
        fq = fake_quantize(x, 4.5, granularity="channel", symmetric=symmetric)
        assert torch.allclose(recon, fq, rtol=0, atol=1e-6)


def test_dtype_and_shape_preserved() -> None:
    x = _data((3, 4, 5), seed=0).to(torch.bfloat16)
    y = fake_quantize(x, 4, granularity="group", axis=1, group_size=7)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


# --- 2. fractional bits: level counts, monotone grid, error bound -------------------------


def test_num_levels() -> None:
    assert qmax(4) == 7 and qmax(5) == 15 and math.isclose(qmax(4.5), 2**3.5 - 1)
    assert [num_levels(b) for b in (2, 3, 4, 4.5, 5, 8)] == [3, 7, 15, 21, 31, 255]
    assert num_levels(4, symmetric=False) == 16 and num_levels(8, symmetric=False) == 256


@pytest.mark.parametrize(("bits", "levels"), [(4.5, 21), (5, 31), (4, 15), (3.5, 11)])
def test_distinct_values_per_group(bits: float, levels: int) -> None:
    # dense data in every group of 128: each uses every level of its grid, never more
    x = torch.linspace(-1, 1, 128).repeat(6, 4) * torch.arange(1, 7).unsqueeze(1)
    for gran in ("tensor", "channel", "group"):
        y = fake_quantize(x, bits, granularity=gran, group_size=128)
        groups = y.reshape(1, -1) if gran == "tensor" else y.reshape(
            -1, 512 if gran == "channel" else 128)
        for g in groups:
            assert len(torch.unique(g)) == levels == num_levels(bits)


@given(b1=st.floats(2, 16), b2=st.floats(2, 16), seed=st.integers(0, 2**16))
@FAST
def test_grid_never_gets_finer_as_bits_fall(b1: float, b2: float, seed: int) -> None:
    lo, hi = sorted((b1, b2))
    assert num_levels(lo) <= num_levels(hi)
    assert num_levels(lo, symmetric=False) <= num_levels(hi, symmetric=False)
    x = _data((4, 16), seed)
    for symmetric in (True, False):
        s_lo = compute_qparams(x, lo, symmetric=symmetric, granularity="channel").scale
        s_hi = compute_qparams(x, hi, symmetric=symmetric, granularity="channel").scale
        assert torch.all(s_lo >= s_hi)


@given(b1=st.floats(2, 10), b2=st.floats(2, 10))
@FAST
def test_distinct_codes_non_increasing_on_dense_data(b1: float, b2: float) -> None:
    # On data that fills its range densely the count of distinct codes is the grid size, so
    # it never increases as b falls. (On a few arbitrary points it can: 0.9 and 1.1 share the
    # code 1 at s=1 but split into 0 and 1 at s=2; see test_sparse_data_counterexample.)
    lo, hi = sorted((b1, b2))
    x = torch.linspace(-1, 1, 4097)
    n_lo = len(torch.unique(integer_codes(x, lo)[0]))
    n_hi = len(torch.unique(integer_codes(x, hi)[0]))
    assert n_lo == num_levels(lo) <= n_hi == num_levels(hi)


def test_sparse_data_counterexample() -> None:
    """Distinct codes of a *given* tensor are bounded by num_levels, not monotone in b."""
    x = torch.tensor([0.9, 1.1, 7.0])
    b_low = 1 + math.log2(4.5)  # q_max = 3.5, scale 2 (vs 1 at b=4)
    assert integer_codes(x, 4)[0].tolist() == [1, 1, 7]
    assert integer_codes(x, b_low)[0].tolist() == [0, 1, 3]


@given(bits=st.floats(2, 16), seed=st.integers(0, 2**16), symmetric=st.booleans(),
       gran=st.sampled_from(["tensor", "channel", "group"]), log_spread=st.floats(-3, 3))
@FAST
def test_error_bounded_by_half_step(bits: float, seed: int, symmetric: bool, gran: str,
                                    log_spread: float) -> None:
    x = _data((5, 24), seed, spread=10.0**log_spread)
    qp = compute_qparams(x, bits, symmetric=symmetric, granularity=gran, group_size=8)
    codes, _ = integer_codes(x, bits, symmetric=symmetric, granularity=gran, group_size=8)
    rows = x.reshape(1, -1) if gran == "tensor" else x.reshape(-1, 24 if gran == "channel" else 8)
    err = (fake_quantize(x, bits, symmetric=symmetric, granularity=gran, group_size=8) - x)
    err = err.reshape(rows.shape).abs()
    # within half a step of the grid s*[qmin-z, qmax-z] the error is at most s/2 (plus the
    # float32 rounding of x * (1/s) and of code * s, a few ulps of |x|)
    zp, s = qp.zero_point.float(), qp.scale
    slack = 0.5 + 1e-5
    inside = (rows >= s * (qp.quant_min - zp - slack)) & (rows <= s * (qp.quant_max - zp + slack))
    bound = s / 2 + rows.abs() * 1e-6 + 1e-30
    assert torch.all(err[inside] <= bound[inside])
    if symmetric:  # the symmetric grid covers the whole group: nothing is clamped
        assert torch.all(inside)
        assert int(codes.abs().max()) <= round(qmax(bits))


# --- 3. gradients: STE and LSQ ------------------------------------------------------------


def test_ste_gradient_matches_torch_mask() -> None:
    x = torch.linspace(-1, 1, 401, requires_grad=True)
    qp = QParams(torch.tensor([[0.01]]), torch.zeros(1, 1, dtype=torch.int32), -7, 7)
    quantize_with_qparams(x.reshape(1, -1), qp).sum().backward()
    grad = x.grad.clone()
    assert set(grad.unique().tolist()) == {0.0, 1.0}
    inner, outer = x.detach().abs() < 0.07, x.detach().abs() > 0.08
    assert torch.all(grad[inner] == 1) and torch.all(grad[outer] == 0)
    x_ref = x.detach().clone().requires_grad_(True)
    torch.fake_quantize_per_tensor_affine(x_ref, 0.01, 0, -7, 7).sum().backward()
    assert torch.equal(grad, x_ref.grad)


@pytest.mark.parametrize("bits", [4, 4.5, 8])
def test_ste_gradient_of_fake_quantize(bits: float) -> None:
    x = _data((6, 20), seed=1).requires_grad_(True)
    for gran in ("tensor", "channel", "group"):
        x.grad = None
        fake_quantize(x, bits, granularity=gran, group_size=8).sum().backward()
        assert torch.equal(x.grad, torch.ones_like(x))  # symmetric: everything in range


def test_lsq_scale_gradient() -> None:
    x = _data((1, 300), seed=5)
    scale = torch.tensor([[0.05]], requires_grad=True)
    qp = QParams(scale, torch.zeros(1, 1, dtype=torch.int32), -7, 7)
    quantize_with_qparams(x, qp).sum().backward()
    g = scale.grad
    assert g is not None and torch.isfinite(g).all() and float(g.abs()) > 0
    # LSQ: d/ds = round(x/s) - x/s inside the range, the clamp bound outside
    v = x / 0.05
    expected = torch.where(v.round().abs() <= 7, v.round() - v, v.round().clamp(-7, 7)).sum()
    assert torch.allclose(g.squeeze(), expected, rtol=1e-4, atol=1e-4)


def test_fake_quantize_detaches_scale() -> None:
    x = _data((4, 8), seed=2).requires_grad_(True)
    y = fake_quantize(x, 4)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(gx, torch.ones_like(x))  # no extra term through max|x|


# --- 4. bad arguments ---------------------------------------------------------------------


@pytest.mark.parametrize("bits", [float("nan"), 1, 1.99, 33, 16.5, "4", True, float("inf"),
                                  -float("inf"), None])
def test_bad_bits(bits: object) -> None:
    x = torch.randn(4, 4)
    with pytest.raises(ValueError, match=re.escape(f"bits={bits!r}")):
        fake_quantize(x, bits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(repr(bits))):
        compute_qparams(x, bits)  # type: ignore[arg-type]


def test_bad_granularity_axis_group_size() -> None:
    x = torch.randn(4, 4)
    with pytest.raises(ValueError, match="'row'"):
        fake_quantize(x, 4, granularity="row")  # type: ignore[arg-type]
    for gs in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=re.escape(f"group_size={gs!r}")):
            fake_quantize(x, 4, granularity="group", group_size=gs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="axis=2"):
        fake_quantize(x, 4, granularity="channel", axis=2)
