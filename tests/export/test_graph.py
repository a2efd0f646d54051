"""fraqat.export.graph: the traced, lowered QDQ graph of a tiny quantized Sana."""

from __future__ import annotations

import copy

import pytest
import torch

from fraqat import export as hx
from fraqat.errors import FraqatError
from fraqat.quant.layers import QuantConfig, quant_layers, quantize_model
from tests.export.tiny import inputs, quantized


def test_one_qdq_pair_per_quantized_tensor_read_by_every_reader(exported):
    model, res = exported
    layers = dict(quant_layers(model))
    quantizers = {id(layer.input_quantizer) for layer in layers.values()}
    assert len(quantizers) < len(layers)  # q/k/v (and the blocks' k/v) share one quantizer
    assert hx.qdq_counts(res.model) == {"quantize": len(quantizers),
                                        "dequantize_weight": len(layers),
                                        "dequantize_activation": len(quantizers)}
    assert not any(node.domain == "fraqat" for node in res.model.graph.node)
    assert max(i.version for i in res.model.opset_import if i.domain in ("", "ai.onnx")) == 21
    # nothing but its Q (and Shape) reads a quantized tensor in float
    quantized_tensors = set(res.lowered.dequantized)
    readers = [n.op_type for n in res.model.graph.node
               if set(n.input) & quantized_tensors]
    assert set(readers) <= {"QuantizeLinear", "Shape"}
    assert res.lowered.float_readers  # Sana: the residual add after cross-attention
    assert not [i.name for i in res.model.graph.input if i.name not in hx.INPUT_NAMES]


def test_onnxruntime_matches_pytorch_on_another_batch_size(exported):
    model, res = exported
    check = inputs(5, 99)  # the batch dimension is dynamic
    report = hx.verify(res, model, check)
    assert report["failures"] == []
    assert report["output"]["rel_l2_error"] <= 0.01
    assert report["activations"]["max_step_difference"] <= 1
    assert hx.run_onnx(res.model, check).shape == (5, 1, 8, 8)


def test_layers_reading_one_tensor_with_different_scales_are_refused(base):
    model = quantized(base, share=False)  # attn1.to_q/k/v: one tensor, three quantizers
    layers = dict(quant_layers(model))
    with torch.no_grad():
        layers["transformer_blocks.0.attn1.to_k"].input_quantizer.scale.mul_(1.25)
    with pytest.raises(FraqatError, match="one tensor .* different activation qparams"):
        hx.export_transformer(model, inputs(2, 10))


def test_unexportable_configs_fail_before_tracing(base):
    uncalibrated = quantize_model(copy.deepcopy(base), QuantConfig(weight_bits=4, act_bits=8))
    with pytest.raises(FraqatError, match="int4 needs export.opset >= 21"):
        hx.export_transformer(uncalibrated, inputs(2, 10), opset=20)
    with pytest.raises(FraqatError, match="never calibrated"):
        hx.export_transformer(uncalibrated, inputs(2, 10))
    fractional = quantize_model(copy.deepcopy(base), QuantConfig(weight_bits=4.5))
    with pytest.raises(FraqatError, match="fractional"):
        hx.export_transformer(fractional, inputs(2, 10))


def test_no_fp32_copy_of_the_quantized_weights_in_the_graph(exported):
    model, res = exported
    sizes = hx.size_report(model, res.weights)
    onnx_bytes = hx.files.tensor_bytes(res.model)
    assert onnx_bytes < sizes["fp32_bytes"] / 5  # INT4 codes + float biases/norms/tables
    names = {t.name for t in res.model.graph.initializer}
    assert not {f"{layer}.weight" for layer in res.weights} & names
