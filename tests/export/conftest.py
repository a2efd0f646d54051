from __future__ import annotations

import pytest
import torch
from torch import nn

from fraqat import export as hx
from tests.export.tiny import TINY_SANA, inputs, quantized

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="session")
def base() -> nn.Module:
    torch.manual_seed(0)
    return diffusers.SanaTransformer2DModel(**TINY_SANA).eval()


@pytest.fixture(scope="session", params=["tensor", "channel"])
def exported(request, base):
    model = quantized(base, granularity=request.param)
    return model, hx.export_transformer(model, inputs(2, 10))
