"""fraqat.quant.tensor_quantizers: one quantizer per tensor, seen by every reader."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fraqat.quant.layers import QuantConfig, calibrate_activations, quant_layers, quantize_model
from fraqat.quant.tensor_quantizers import (
    find_plan,
    layer_input_semantics,
    plan_of,
    share_tensor_quantizers,
)


class Residual(nn.Module):
    """y = fc2(h) + fc3(h) + h, h = x + fc1(x): h is read by fc2, fc3 and the add after them;
    the input x by fc1 and the add (a model input: never overwritten, reported)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.fc1(x)
        return self.fc2(h) + self.fc3(h) + h


def model_and_batches():
    torch.manual_seed(0)
    model = quantize_model(Residual(), QuantConfig(weight_bits=4, act_bits=8))
    return model, [torch.randn(16, 8) for _ in range(3)]


def test_plan_ties_readers_of_one_tensor_and_writes_back_where_float_ops_read():
    model, batches = model_and_batches()
    plan = share_tensor_quantizers(model, {"x": batches[0]})
    assert plan.groups == [["fc1"], ["fc2", "fc3"]]
    assert plan.write_back == ["fc2"] and plan.early == ["fc1"]
    assert model.fc2.input_quantizer is model.fc3.input_quantizer
    assert plan_of(model) == {"groups": [["fc2", "fc3"]], "write_back": ["fc2"]}


def test_every_reader_sees_the_quantized_tensor_and_gradients_flow():
    model, batches = model_and_batches()
    share_tensor_quantizers(model, {"x": batches[0]})
    calibrate_activations(model, batches, lambda m, b: m(b))
    x = batches[1]
    with torch.no_grad():
        h = x + model.fc1(x)
        hq = model.fc2.input_quantizer(h.clone())
        want = model.fc2(hq) + model.fc3(hq) + hq  # the device: h has one INT8 encoding
        with layer_input_semantics(model):
            views = model(x)  # only the layers' views quantized
    assert torch.equal(model(x).detach(), want)
    assert not torch.allclose(views, want)
    x.requires_grad_(True)
    model(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_quantized_copy_applies_the_plan_and_save_run_records_it(tmp_path):
    pytest.importorskip("diffusers")
    from fraqat.data import PROMPTS
    from fraqat.io import read_json
    from fraqat.models.registry import build_tiny_sana
    from fraqat.train.runs import quantized_copy, save_run

    torch.manual_seed(0)
    teacher = build_tiny_sana(32, 2, 2, PROMPTS).eval()
    rng = torch.get_rng_state()
    student = quantized_copy(teacher, QuantConfig(weight_bits=4, act_bits=8))
    assert torch.equal(torch.get_rng_state(), rng)  # the probe leaves training's RNG alone
    layers = dict(quant_layers(student.transformer))
    qkv = [layers[f"transformer_blocks.1.attn1.to_{c}"].input_quantizer for c in "qkv"]
    assert qkv[0] is qkv[1] is qkv[2]
    plan = plan_of(student.transformer)
    assert plan["write_back"] == [f"transformer_blocks.{i}.attn2.to_q" for i in range(2)]
    save_run(tmp_path / "run", student, QuantConfig(), {"method": "qat"})
    assert read_json(tmp_path / "run" / "quant.json")["tensor_quantizers"] == plan


def test_a_float_read_before_the_quantized_reader_is_reported():
    class Early(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = x * 2
            return h.exp() + self.fc(h)  # exp reads h before fc quantizes it

    model = quantize_model(Early(), QuantConfig())
    plan = find_plan(model, {"x": torch.randn(2, 4)})
    assert plan.early == ["fc"] and plan.write_back == []  # no reader after fc
    assert copy.deepcopy(model)  # hooks and ties survive deepcopy (the runs copy models)
