"""The converted model: packed codes that reproduce the fake-quant model exactly, in one call."""

from __future__ import annotations

import stat

import pytest
import torch
from torch import nn

from fraqat.errors import FraqatError
from fraqat.models.folder import load_pipeline
from fraqat.models.registry import TextToImage, dummy_inputs
from fraqat.quant import packing
from fraqat.quant.converted import WEIGHTS, load_converted, save_converted, stored_bytes
from fraqat.quant.layers import QuantConfig, calibrate_activations, quantize_model
from fraqat.quant.packed import PackedConv2d, PackedLinear, convert_model, packed_layers
from fraqat.quant.tensor_quantizers import plan_of
from fraqat.train.runs import quantized_copy
from tests.train.test_runs import _images


@pytest.mark.parametrize(("qmin", "qmax"), [(-7, 7), (0, 15), (-5, 5), (-127, 127), (0, 300)])
def test_pack_unpack_round_trip(qmin, qmax):
    codes = torch.randint(qmin, qmax + 1, (7, 5))
    bits = packing.container_bits(qmin, qmax)
    stored = packing.pack(codes, qmin, bits)
    assert stored.numel() == packing.packed_numel(35, bits)
    assert torch.equal(packing.unpack(stored, qmin, bits, 35).view(7, 5), codes.int())


def test_four_bit_codes_take_half_a_byte_low_nibble_first():
    stored = packing.pack(torch.tensor([-7, 7, 0]), -7, 4)
    assert stored.tolist() == [0 | (14 << 4), 7]


def _toy(config: QuantConfig) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16, 70),
                          nn.GELU(), nn.Linear(70, 5))
    quantize_model(model, config)
    calibrate_activations(model, [torch.randn(4, 3, 4, 4) for _ in range(2)], lambda m, b: m(b))
    return model.eval()


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_converted_layers_equal_the_fake_quant_ones(granularity, symmetric):
    config = QuantConfig(weight_bits=4, act_bits=8, granularity=granularity, group_size=16,
                         symmetric=symmetric, keep_8bit=["4"])
    model = _toy(config)
    x = torch.randn(6, 3, 4, 4)
    with torch.no_grad():
        want = model(x)
        specs = convert_model(model)
        got = model(x)
    assert torch.equal(got, want)
    assert [type(m) for _, m in packed_layers(model)] == [PackedConv2d, PackedLinear, PackedLinear]
    assert specs["2"]["container"] == 4 and specs["4"]["container"] == 8  # kept at 8 bits
    assert model[2].weight_packed.numel() == 70 * 128 // 2


def _tiny_sana(tiny_pipeline_dir):
    pipe = load_pipeline("sana-600m", str(tiny_pipeline_dir("sana")))
    config = QuantConfig(weight_bits=4, act_bits=8, granularity="channel")
    student = quantized_copy(TextToImage(pipe.transformer, None, (4, 16, 16)), config).transformer
    pipe.transformer = student
    calibrate_activations(student, [0], lambda model, _: _images(pipe))
    return pipe, student


def test_converted_sana_loads_in_one_call_and_generates_the_same_images(tiny_pipeline_dir,
                                                                       tmp_path):
    pipe, student = _tiny_sana(tiny_pipeline_dir)
    want = _images(pipe)
    inputs = dummy_inputs(student, batch=2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_out = student(**inputs)[0]
    plan = plan_of(student)
    specs = convert_model(student)
    save_converted(tmp_path / "conv", student, specs, {"method": "x"})
    assert stat.S_IMODE((tmp_path / "conv" / WEIGHTS).stat().st_mode) == 0o644

    from diffusers import SanaPipeline

    import fraqat

    loaded = fraqat.load_converted(tmp_path / "conv")
    assert type(loaded).__name__ == "SanaTransformer2DModel"
    assert plan_of(loaded) == plan and plan["groups"]  # q/k/v still share one quantizer
    assert not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in loaded.modules())
    with torch.no_grad():
        assert torch.equal(loaded(**inputs)[0], want_out)
    swapped = SanaPipeline.from_pretrained(tiny_pipeline_dir("sana"), transformer=loaded)
    assert torch.equal(_images(swapped), want)
    assert stored_bytes(tmp_path / "conv") > 0


def test_missing_or_foreign_folder_is_one_line(tmp_path):
    with pytest.raises(FraqatError, match="config.json: missing"):
        load_converted(tmp_path)
    for name in ("config.json", "quantization_config.json", "model.safetensors"):
        (tmp_path / name).write_text('{"format": "other", "_class_name": "SanaTransformer2DModel"}')
    with pytest.raises(FraqatError, match="format 'other' is not read"):
        load_converted(tmp_path)


def test_truncated_weights_are_one_line(tiny_pipeline_dir, tmp_path):
    _, student = _tiny_sana(tiny_pipeline_dir)
    save_converted(tmp_path / "conv", student, convert_model(student), {})
    weights = tmp_path / "conv" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(FraqatError, match="model.safetensors: not a readable weights file"):
        load_converted(tmp_path / "conv")
