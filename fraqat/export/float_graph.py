"""The float graph the encodings describe (AIMET's / QNN's input): QDQ removed, weights dequantized.

Tensor names are kept (``<layer>.weight`` becomes an FP32 initializer), so this model plus
``model.encodings`` is what AIMET's own export produces and what
``qnn-onnx-converter --quantization_overrides`` reads. Its FP32 weights are 8x the INT4
codes, so for Sana-600M and up it must be saved with external data
(:func:`fraqat.export.files.save_model` does so on its own).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fraqat.export.graph import _replace_nodes


def strip_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with weight DQ folded into FP32 initializers, activation QDQ removed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    rename, keep, used = {}, [], set()
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            graph.initializer.append(numpy_helper.from_array(_dequantize(node, inits),
                                                             node.output[0]))
            used.update(node.input)
        elif node.op_type == "DequantizeLinear":
            q = producers[node.input[0]]
            rename[node.output[0]] = q.input[0]
            used.update(node.input[1:])
        elif node.op_type != "QuantizeLinear":
            keep.append(node)
    _replace_nodes(graph, keep, rename)
    drop = used - {i for n in keep for i in n.input}
    for i in reversed(range(len(graph.initializer))):  # by index: no tensor comparisons
        if graph.initializer[i].name in drop:
            del graph.initializer[i]
    return out


def _dequantize(node: onnx.NodeProto, inits: dict) -> np.ndarray:
    codes = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    zp = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    if scale.ndim == 0:
        return (codes - zp) * scale
    if block:
        scale = np.repeat(scale, block, axis=axis)[tuple(slice(0, d) for d in codes.shape)]
        zp = np.repeat(zp, block, axis=axis)[tuple(slice(0, d) for d in codes.shape)]
        return (codes - zp) * scale
    shape = [1] * codes.ndim
    shape[axis] = -1
    return (codes - zp.reshape(shape)) * scale.reshape(shape)
