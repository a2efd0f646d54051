"""fraqat.quant.layers: the in-place Linear/Conv2d swap on a tiny SanaTransformer2DModel."""

from __future__ import annotations

import copy
import fnmatch

import pytest
import torch
from torch import nn

from fraqat.models.registry import tiny_sana_config
from fraqat.quant.layers import (
    QuantConfig,
    QuantConv2d,
    QuantLinear,
    calibrate_activations,
    layer_report,
    quant_layers,
    quantize_model,
    set_weight_bits,
    weight_bits,
)

diffusers = pytest.importorskip("diffusers")

TINY_SANA = tiny_sana_config(width=32, layers=1, heads=2, patch_size=1)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def base() -> nn.Module:
    torch.manual_seed(0)
    return diffusers.SanaTransformer2DModel(**TINY_SANA).eval()


@pytest.fixture(scope="module")
def batches() -> list[Batch]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 6, 32, generator=g),
             torch.rand(2, generator=g) * 1000) for _ in range(3)]


def run(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, enc, t = batch
    return model(x, encoder_hidden_states=enc, timestep=t).sample


def swapped(base: nn.Module, **kw) -> nn.Module:
    return quantize_model(copy.deepcopy(base), QuantConfig(**kw))


def float_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def test_full_precision_config_is_identical(base: nn.Module, batches: list[Batch]) -> None:
    model = swapped(base, weight_bits=None, act_bits=None)
    assert not float_layers(model)
    for b in batches:
        assert torch.equal(run(model, b), run(base, b))


@torch.no_grad()
def test_8bit_weights_close_4bit_further(base: nn.Module, batches: list[Batch]) -> None:
    ref = run(base, batches[0])
    e8 = rel_err(run(swapped(base, weight_bits=8, act_bits=None), batches[0]), ref)
    e4 = rel_err(run(swapped(base, weight_bits=4, act_bits=None), batches[0]), ref)
    assert 0 < e8 < 0.02
    assert e8 < e4


def test_every_layer_swapped_except_skip(base: nn.Module) -> None:
    originals = float_layers(base)
    assert len(originals) == 18  # 14 Linear + 4 Conv2d
    model = swapped(base)
    assert not float_layers(model)
    kinds = {type(m) for _, m in quant_layers(model)}
    assert kinds == {QuantLinear, QuantConv2d}
    assert not any(m.training for m in model.modules())  # base is in eval mode
    layers = [m for _, m in quant_layers(model)]
    quantize_model(model, QuantConfig())  # idempotent: quantized layers are not re-wrapped
    assert [m for _, m in quant_layers(model)] == layers
    assert [n for n, _ in quant_layers(model)] == originals
    skip = ["proj_out", "time_embed.*", "*.ff.conv_depth"]
    model = swapped(base, skip=skip)
    left = float_layers(model)
    assert left and left == [n for n in originals
                             if any(fnmatch.fnmatchcase(n, p) for p in skip)]
    assert len(list(quant_layers(model))) == len(originals) - len(left)


def test_parameters_shared_not_copied(base: nn.Module) -> None:
    model = copy.deepcopy(base)
    weights = {n: m.weight for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)}
    quantize_model(model, QuantConfig())
    for name, layer in quant_layers(model):
        assert layer.weight is weights[name]


def test_keep_8bit_and_set_weight_bits(base: nn.Module) -> None:
    keep = ["patch_embed.proj", "proj_out"]
    model = swapped(base, weight_bits=4, keep_8bit=keep)

    def bits() -> dict[str, float | None]:
        return {r["name"]: r["weight_bits"] for r in layer_report(model)}

    assert {n: b for n, b in bits().items() if n in keep} == {"patch_embed.proj": 8.0,
                                                               "proj_out": 8.0}
    assert {b for n, b in bits().items() if n not in keep} == {4.0}
    set_weight_bits(model, 3.5)
    assert {b for n, b in bits().items() if n not in keep} == {3.5}
    assert {bits()[n] for n in keep} == {8.0}
    set_weight_bits(model, 10)
    assert set(bits().values()) == {10.0}
    set_weight_bits(model, None)
    assert set(bits().values()) == {None}
    for bad in (1, 33, float("nan"), "4", True):
        with pytest.raises(ValueError, match="weight_bits="):
            set_weight_bits(model, bad)  # type: ignore[arg-type]
    assert set(bits().values()) == {None}  # a rejected value changes nothing


@torch.no_grad()
def test_weight_bits_context_manager_restores(base: nn.Module, batches: list[Batch]) -> None:
    model = swapped(base, weight_bits=4, act_bits=None, keep_8bit=["proj_out"])
    before = run(model, batches[0])
    with weight_bits(model, 6) as m:
        assert m is model
        assert {layer.weight_bits for _, layer in quant_layers(model)} == {6.0}
        assert not torch.equal(run(model, batches[0]), before)
    assert {layer.weight_bits for _, layer in quant_layers(model)} == {4.0}
    assert torch.equal(run(model, batches[0]), before)
    with pytest.raises(KeyError), weight_bits(model, None):
        raise KeyError("boom")
    assert torch.equal(run(model, batches[0]), before)


@torch.no_grad()
def test_calibrate_activations(base: nn.Module, batches: list[Batch]) -> None:
    model = swapped(base, weight_bits=8, act_bits=8)
    w8 = run(model, batches[0])  # not calibrated: activations pass through
    assert torch.equal(w8, run(swapped(base, weight_bits=8, act_bits=None), batches[0]))
    assert calibrate_activations(model, batches, run) == len(batches)
    quantizers = [layer.input_quantizer for _, layer in quant_layers(model)]
    assert len(quantizers) == 18
    assert all(q._ready and bool(q.calibrated) and not q.observing for q in quantizers)
    out = run(model, batches[0])
    assert not torch.equal(out, w8)
    assert rel_err(out, run(base, batches[0])) < 0.05


@torch.no_grad()
def test_state_dict_keys_and_round_trip(base: nn.Module, batches: list[Batch]) -> None:
    model = swapped(base, weight_bits=4, act_bits=8)
    calibrate_activations(model, batches, run)
    keys, orig = set(model.state_dict()), set(base.state_dict())
    assert orig <= keys
    assert all(".input_quantizer." in k for k in keys - orig)
    fresh = swapped(base, weight_bits=4, act_bits=8)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(run(fresh, batches[1]), run(model, batches[1]))


def test_gradients_reach_every_weight(base: nn.Module, batches: list[Batch]) -> None:
    model = swapped(base, weight_bits=4.5, act_bits=8, granularity="group", group_size=16)
    calibrate_activations(model, batches, run)
    run(model, batches[0]).pow(2).mean().backward()
    for name, layer in quant_layers(model):
        g = layer.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


@pytest.mark.parametrize("granularity", ["channel", "group"])
@torch.no_grad()
def test_other_granularities_run(base: nn.Module, batches: list[Batch], granularity: str) -> None:
    model = swapped(base, weight_bits=4, act_bits=None, granularity=granularity, group_size=16)
    out = run(model, batches[0])
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_layer_report_rows(base: nn.Module) -> None:
    model = swapped(base, weight_bits=4.5, act_bits=8, keep_8bit=["proj_out"])
    rows = layer_report(model)
    assert len(rows) == 18
    by_name = {r["name"]: r for r in rows}
    assert by_name["proj_out"] == {"name": "proj_out", "type": "QuantLinear", "shape": [1, 32],
                                   "weight_bits": 8.0, "act_bits": 8.0}
    assert by_name["patch_embed.proj"]["type"] == "QuantConv2d"
    assert by_name["patch_embed.proj"]["shape"] == [32, 1, 1, 1]
    assert {r["weight_bits"] for r in rows if r["name"] != "proj_out"} == {4.5}


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="'row'"):
        QuantConfig(granularity="row")
    with pytest.raises(ValueError, match="weight_bits=1"):
        QuantConfig(weight_bits=1)
    with pytest.raises(ValueError, match="act_bits=33"):
        QuantConfig(act_bits=33)
    with pytest.raises(ValueError, match="group_size=0"):
        QuantConfig(granularity="group", group_size=0)
