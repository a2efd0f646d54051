"""Per-sample fidelity to the FP samples and the packed model size: the same for every kind
of model."""

from __future__ import annotations

import math

import torch

from fraqat.models.registry import TextToImage
from fraqat.quant.layers import quant_layers

PIXEL_RANGE = 2.0     # images live in [-1, 1]: PSNR peak-to-peak


def fidelity(images: torch.Tensor, reference: torch.Tensor) -> tuple[float, float | None]:
    """MSE and PSNR (dB, peak-to-peak 2) of clipped images; PSNR is null when identical."""
    mse = float((images - reference).pow(2).mean())
    return mse, (10 * math.log10(PIXEL_RANGE**2 / mse) if mse > 0 else None)


def model_size_mb(model: TextToImage) -> float:
    """Packed transformer size: bits x numel for quantized weights, fp32 for everything else
    (biases, norms, embeddings, activation scales). The prompt encoder is not counted."""
    layers = quant_layers(model.transformer)
    bits_of = {id(layer.weight): layer.effective_bits for _, layer in layers}
    total = sum(p.numel() * (bits_of.get(id(p)) or 32.0) for p in model.transformer.parameters())
    return total / 8 / 1e6
