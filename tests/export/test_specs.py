"""fraqat.export.specs: stored weight codes, per-group blocks, 8-bit layers, containers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from fraqat import export as hx
from fraqat.errors import FraqatError
from fraqat.quant.core import integer_codes
from fraqat.quant.layers import quant_layers
from tests.export.tiny import inputs, quantized


def test_weight_codes_are_the_trained_integer_codes(exported):
    model, res = exported
    assert hx.count_code_mismatches(res.model, model) == (0, sum(
        layer.weight.numel() for _, layer in quant_layers(model)))
    inits = {t.name: t for t in res.model.graph.initializer}
    for name, layer in quant_layers(model):
        codes, qp = integer_codes(layer.weight.detach(), 4, granularity=layer.granularity)
        stored = inits[f"{name}.weight_quantized"]
        assert stored.data_type == TensorProto.INT4  # packed: two codes per byte
        assert np.array_equal(onnx.numpy_helper.to_array(stored).astype(np.int32),
                              codes.numpy())
        scale = onnx.numpy_helper.to_array(inits[f"{name}.weight_scale"])
        assert np.array_equal(scale.reshape(-1), qp.scale.reshape(-1).numpy())


def test_per_group_weights_are_blocked_dequantize(base):
    model = quantized(base, granularity="group", group_size=16)
    res = hx.export_transformer(model, inputs(2, 10))
    assert hx.verify(res, model, inputs(4, 7))["failures"] == []
    kinds = Counter(p["enc_type"] for p in res.encodings["param_encodings"])
    assert kinds["PER_BLOCK"] > 0  # Linear/1x1 conv with in > 16
    assert kinds["PER_CHANNEL"] > 0  # one group per row (e.g. the 3x3 depthwise conv)
    assert all(p["block_size"] == 16 for p in res.encodings["param_encodings"]
               if p["enc_type"] == "PER_BLOCK")
    with pytest.raises(FraqatError, match="span kernel positions"):
        hx.export_transformer(quantized(base, granularity="group", group_size=4),
                              inputs(2, 10))


def test_keep_8bit_layers_and_int8_container(base):
    model = quantized(base, keep_8bit=["proj_out"])
    res = hx.export_transformer(model, inputs(2, 10), opset=20, weight_dtype="int8")
    assert hx.verify(res, model, inputs(3, 5))["failures"] == []
    bw = {p["name"]: p["bw"] for p in res.encodings["param_encodings"]}
    assert bw.pop("proj_out.weight") == 8 and set(bw.values()) == {4}
    codes = hx.onnx_weight_codes(res.model)
    assert set(res.lowered.weight_dtypes.values()) == {"INT8"}
    assert np.abs(codes["proj_out"]).max() > 7  # 8-bit grid
    assert max(np.abs(c).max() for n, c in codes.items() if n != "proj_out") <= 7
