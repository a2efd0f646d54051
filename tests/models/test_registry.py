"""fraqat.models.registry: every registry class loads from disk, quantizes, calibrates and runs.

Tiny random-weight models (one block, ~10-20k parameters) stand in for the real checkpoints;
they are written with diffusers' ``save_pretrained`` exactly as a downloaded pipeline lays
them out (``<pipe>/transformer/{config.json,diffusion_pytorch_model.safetensors}``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fraqat.errors import FraqatError
from fraqat.models.registry import REGISTRY, dummy_inputs, load_transformer, tiny_sana_config
from fraqat.quant.layers import (
    QuantConfig,
    QuantConv2d,
    QuantLinear,
    calibrate_activations,
    quant_layers,
    quantize_model,
)

diffusers = pytest.importorskip("diffusers")
QUANTIZED = (QuantLinear, QuantConv2d)

TINY: dict[str, dict] = {
    "sana-600m": tiny_sana_config(width=16, layers=1, heads=2),
    "pixart-sigma": dict(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                         out_channels=8, num_layers=1, cross_attention_dim=16, sample_size=8,
                         patch_size=2, caption_channels=12),
    "sd3.5-medium": dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4,
                         num_layers=1, attention_head_dim=8, num_attention_heads=2,
                         joint_attention_dim=12, caption_projection_dim=16,
                         pooled_projection_dim=10, pos_embed_max_size=8,
                         dual_attention_layers=(0,), qk_norm="rms_norm"),
    "flux-schnell": dict(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1,
                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
                         pooled_projection_dim=10, axes_dims_rope=(2, 2, 4)),
}


def expected_shape(model: nn.Module, batch: int) -> tuple[int, ...]:
    cfg = model.config
    if type(model).__name__ == "FluxTransformer2DModel":
        return (batch, 16, cfg.patch_size**2 * (cfg.out_channels or cfg.in_channels))
    return (batch, cfg.out_channels, cfg.sample_size, cfg.sample_size)


def float_layers(model: nn.Module) -> list[str]:
    """Linear/Conv2d layers (subclasses included) that are not quantized."""
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and not isinstance(m, QUANTIZED)]


@pytest.mark.parametrize("name", list(TINY))
def test_load_quantize_forward(name: str, tmp_path: Path) -> None:
    cls = getattr(diffusers, REGISTRY[name].cls_name)
    torch.manual_seed(0)
    original = cls(**TINY[name]).eval()
    assert sum(p.numel() for p in original.parameters()) < 30_000
    original.save_pretrained(tmp_path / "pipe" / "transformer")

    from_pipe = load_transformer(name, model_path=str(tmp_path / "pipe"))
    from_folder = load_transformer(name, model_path=str(tmp_path / "pipe" / "transformer"))
    ref = original.state_dict()
    for loaded in (from_pipe, from_folder):
        assert type(loaded) is cls
        state = loaded.state_dict()
        assert state.keys() == ref.keys()
        assert all(torch.equal(state[k], ref[k]) for k in ref)

    model = quantize_model(from_pipe.eval(), QuantConfig(weight_bits=4, act_bits=8))
    assert float_layers(model) == []
    assert len(list(quant_layers(model))) == len(float_layers(original)) > 0
    inputs = dummy_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    assert calibrate_activations(model, [inputs], lambda m, b: m(**b)) == 1
    with torch.no_grad():
        out = model(**inputs).sample
        fp = original(**inputs).sample
    assert out.shape == fp.shape == expected_shape(model, 2)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, fp)  # the fake quantizers are really in the path


def test_missing_weights_one_line(tmp_path: Path) -> None:
    where = str(tmp_path / "nothing")
    with pytest.raises(FraqatError) as info:
        load_transformer("sana-600m", model_path=where)
    msg = str(info.value)
    assert "\n" not in msg
    assert "sana-600m" in msg and where in msg and "model_path" in msg


def test_empty_folder_names_transformer_subfolder(tmp_path: Path) -> None:
    with pytest.raises(FraqatError, match="model_path") as info:
        load_transformer("flux-schnell", model_path=str(tmp_path))
    assert str(tmp_path / "transformer") in str(info.value)


def test_unknown_model() -> None:
    with pytest.raises(FraqatError, match="not known"):
        load_transformer("sdxl", model_path="/nowhere")


def test_every_registry_class_covered() -> None:
    assert {REGISTRY[n].cls_name for n in TINY} == {s.cls_name for s in REGISTRY.values()}
