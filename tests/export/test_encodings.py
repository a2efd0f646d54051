"""fraqat.export.encodings: AIMET 1.0.0 encodings naming the ONNX tensors."""

from __future__ import annotations

import json

import numpy as np

from fraqat.quant.core import integer_codes
from fraqat.quant.layers import quant_layers
from tests.export.tiny import tensor_names


def test_encodings_name_onnx_tensors_with_trained_numbers(exported):
    model, res = exported
    enc = json.loads(json.dumps(res.encodings))  # what the file holds
    assert enc["version"] == "1.0.0"
    names = tensor_names(res.model)
    params, acts = enc["param_encodings"], enc["activation_encodings"]
    assert {p["name"] for p in params} | {a["name"] for a in acts} <= names
    assert len(acts) == len(res.lowered.dequantized)  # one encoding per quantized tensor
    assert {(p["bw"], p["is_sym"], p["dtype"]) for p in params} == {(4, True, "INT")}
    assert {(a["bw"], a["enc_type"]) for a in acts} == {(8, "PER_TENSOR")}
    layers = dict(quant_layers(model))
    by_name = {p["name"]: p for p in params}
    for name, layer in layers.items():
        p = by_name[f"{name}.weight"]
        _, qp = integer_codes(layer.weight.detach(), 4, granularity=layer.granularity)
        assert np.array_equal(np.float32(p["scale"]), qp.scale.reshape(-1).numpy())
        assert set(p["offset"]) == {-8}
        assert p["enc_type"] == ("PER_TENSOR" if layer.granularity == "tensor"
                                 else "PER_CHANNEL")
    # each activation encoding is the calibrated quantizer of the layers reading that tensor
    for name, tensor in res.lowered.act_tensors.items():
        a = next(a for a in acts if a["name"] == tensor)
        q = layers[name].input_quantizer
        assert np.float32(a["scale"][0]) == np.float32(q.scale.item())
        assert a["offset"] == [-int(q.zero_point)] and a["is_sym"] is False
