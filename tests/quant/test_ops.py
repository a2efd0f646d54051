"""fraqat.quant.ops: the custom ops equal the reference and compile without recompiles (CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fraqat.quant import ops
from fraqat.quant.core import QParams, fake_quantize, grid_tensor, quantize_with_qparams
from fraqat.quant.layers import QuantConfig, calibrate_activations, quantize_model, set_weight_bits


def _data(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 2.0 + 0.3


def _value_and_grad(fq, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    y = fq(x)
    (dx,) = torch.autograd.grad(y, x, g)
    return y.detach(), dx


@pytest.mark.parametrize("granularity,group_size,axis", [("tensor", 64, 0), ("channel", 64, 0),
                                                         ("group", 16, 0), ("group", 48, 1)])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2.0, 3.05, 4.5, 8.0])
def test_op_equals_reference(granularity, group_size, axis, symmetric, bits) -> None:
    """Same values and straight-through gradients, clamping cases (3.05 asymmetric) included."""
    kw = dict(granularity=granularity, group_size=group_size, axis=axis, symmetric=symmetric)
    for shape in [(33, 70), (6, 5, 3, 3)]:
        x, g = _data(shape, 1), _data(shape, 2)
        ref = _value_and_grad(lambda t: fake_quantize(t, bits, **kw), x, g)
        got = _value_and_grad(lambda t: ops.fake_quantize(t, bits, **kw), x, g)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), shape


def test_out_dtype_is_cast_of_reference() -> None:
    x = _data((40, 30), 3)
    y = ops.fake_quantize(x, 4.5, granularity="channel", out_dtype=torch.bfloat16)
    assert torch.equal(y, fake_quantize(x, 4.5, granularity="channel").to(torch.bfloat16))


@pytest.mark.parametrize("learn", [False, True])
def test_given_op_equals_reference_with_lsq(learn: bool) -> None:
    x, g = _data((16, 50), 4), _data((16, 50), 5)
    grads = []
    for fq in (quantize_with_qparams, ops.fake_quantize_given):
        s = torch.tensor(0.03, requires_grad=learn)
        xr = x.clone().requires_grad_(True)
        y = fq(xr, QParams(s.abs(), torch.tensor(100, dtype=torch.int32), 0, 255))
        y.backward(g)
        grads.append((y.detach(), xr.grad, s.grad))
    (y0, dx0, ds0), (y1, dx1, ds1) = grads
    assert torch.equal(y0, y1) and torch.equal(dx0, dx1) and (dx0 == 0).any()
    if learn:  # same terms, summed in another order: fp32 rounding of a 800-term sum
        assert torch.allclose(ds0, ds1, rtol=1e-5, atol=0)
    else:
        assert ds0 is None and ds1 is None


def test_opcheck() -> None:
    """Schema, fake (meta) implementations and autograd registration agree (torch.library)."""
    x = _data((8, 24), 6).requires_grad_(True)
    for gran in ("tensor", "channel", "group"):
        torch.library.opcheck(torch.ops.fraqat.fake_quant.default,
                              (x, grid_tensor(4.5, False), gran, 16, False, torch.float32))
    torch.library.opcheck(torch.ops.fraqat.fake_quant_given.default,
                          (x, torch.tensor(0.05), torch.tensor(3, dtype=torch.int32), 0, 255,
                           torch.float32))
    torch.library.opcheck(torch.ops.fraqat.masked_grad.default,
                          (x.detach(), (x > 0).to(torch.uint8), torch.bfloat16))


@pytest.mark.parametrize("layout", ["transposed", "channels_last", "strided"])
def test_given_op_layout_is_empty_like(layout: str) -> None:
    """Outputs take ``torch.empty_like(x)``'s layout, as the fake implementation says
    (inductor asserts it: a transposed activation once broke the compiled CUDA step)."""
    base = _data((2, 6, 5, 4), 7)
    x = {"transposed": base[:, :, :, 0].transpose(1, 2),
         "channels_last": base.to(memory_format=torch.channels_last),
         "strided": base[:, ::2]}[layout].requires_grad_(True)
    args = (x, torch.tensor(0.05), torch.tensor(3, dtype=torch.int32), 0, 255, torch.bfloat16)
    y, inside = torch.ops.fraqat.fake_quant_given(*args)
    assert y.stride() == inside.stride() == torch.empty_like(x).stride()
    torch.library.opcheck(torch.ops.fraqat.fake_quant_given.default, args)


def test_compile_fullgraph_no_recompile_on_bit_change() -> None:
    """The bit-width is a tensor the ops read: every stage of a schedule reuses one graph."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(288, 16),
                          nn.GELU(), nn.Linear(16, 4))
    quantize_model(model, QuantConfig(weight_bits=8.0, granularity="channel"))
    x = torch.randn(4, 3, 6, 6)
    calibrate_activations(model, [x], lambda m, b: m(b))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch._dynamo.config.patch(recompile_limit=1, error_on_recompile=True):
        for bits in (8.0, 7.5, 4.0, 3.05):
            set_weight_bits(model, bits)
            xr = x.clone().requires_grad_(True)
            y = compiled(xr)
            y.sum().backward()
            ref = x.clone().requires_grad_(True)
            model(ref).sum().backward()
            assert torch.equal(y, model(x)) and torch.equal(xr.grad, ref.grad), bits
    torch._dynamo.reset()


def test_compiled_layers_trace_to_plain_aten_ops() -> None:
    """Under torch.compile the fake-quant is the reference's aten formula (inductor can fuse
    it with its neighbours): no custom op and no autograd.Function node in the traced graph."""
    model = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 4))
    quantize_model(model, QuantConfig(weight_bits=4.5))
    x = torch.randn(5, 12)
    calibrate_activations(model, [x], lambda m, b: m(b))
    graphs: list[str] = []

    def backend(gm: torch.fx.GraphModule, _inputs):
        graphs.append(gm.code)
        return gm.forward

    torch._dynamo.reset()
    y = torch.compile(model, fullgraph=True, backend=backend)(x)
    torch._dynamo.reset()
    assert torch.equal(y, model(x)) and len(graphs) == 1
    assert "fraqat" not in graphs[0] and "autograd_function" not in graphs[0]
    assert "round" in graphs[0] and "clamp" in graphs[0]
