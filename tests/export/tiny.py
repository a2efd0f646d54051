"""A tiny quantized Sana and its inputs, shared by the export tests."""

from __future__ import annotations

import copy

import onnx
import torch
from torch import nn

from fraqat.models.registry import tiny_sana_config
from fraqat.quant.layers import QuantConfig, calibrate_activations, quantize_model
from fraqat.quant.tensor_quantizers import share_tensor_quantizers

TINY_SANA = tiny_sana_config(width=32, layers=1, heads=2, patch_size=1)


def inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 6, dtype=torch.long)
    mask[:, 4:] = 0  # padded prompt tokens, as the prompt encoder makes them
    return {"hidden_states": torch.randn(batch, 1, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(batch, 6, 32, generator=g),
            "timestep": torch.rand(batch, generator=g) * 1000,
            "encoder_attention_mask": mask}


def quantized(base: nn.Module, share: bool = True, **kw) -> nn.Module:
    """W4A8 copy of ``base`` (``share``: per-tensor quantizers, as the library builds it)."""
    model = quantize_model(copy.deepcopy(base), QuantConfig(**{"weight_bits": 4, "act_bits": 8,
                                                               **kw}))
    if share:
        share_tensor_quantizers(model, inputs(1, 0))
    calibrate_activations(model, [inputs(8, s) for s in range(3)],
                          lambda m, b: m(**b, return_dict=False))
    return model.eval()


def tensor_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    return ({i.name for i in g.input} | {t.name for t in g.initializer}
            | {o for n in g.node for o in n.output})
