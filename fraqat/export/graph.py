"""The ONNX QDQ graph: trace the quantized transformer with marker nodes, lower them to QDQ.

How the graph is built
    torch's TorchScript exporter (``dynamo=False``) traces the model with each quantized layer
    temporarily replaced by marker nodes ``fraqat::ActQuant`` / ``fraqat::WeightQuant`` carrying
    the layer name, so no tensor has to be matched to a layer by guesswork. A quantized weight
    enters the trace only as a scalar placeholder feeding its marker (typed with the weight's
    shape), so the traced protobuf holds just the float parameters (biases, norms, tables) and
    stays far below protobuf's 2 GB limit (Sana-600M: 2.8 MB of its 2.4 GB FP32 parameters).
    The exporter stops at opset 20; ``onnx.version_converter`` lifts the graph to the target
    opset, then lowering replaces the markers by standard QDQ nodes with the trained numbers
    and stores the weights as integer codes (INT4: an eighth of their FP32 bytes).

One encoding per tensor
    HTP and AIMET attach an activation encoding to a *tensor*, so every reader of a quantized
    tensor sees its quantized value: each quantized tensor gets one ``QuantizeLinear`` /
    ``DequantizeLinear`` pair and *every* reader (quantized layers and float ops alike, e.g.
    Sana's residual add after cross-attention) reads the ``DequantizeLinear`` output. The
    PyTorch model is trained with the same semantics (:mod:`fraqat.quant.tensor_quantizers`), which
    :func:`fraqat.export.verification.verify` checks. Layers that read one tensor must
    therefore share one quantizer; different qparams on one tensor are refused.
"""

from __future__ import annotations

import heapq
import io
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from fraqat.errors import FraqatError
from fraqat.export import encodings as enc
from fraqat.export.files import check_model
from fraqat.export.specs import (
    OPSET_21,
    ActSpec,
    QuantLayer,
    WeightSpec,
    act_container,
    check_containers,
    collect_specs,
    weight_container,
)
from fraqat.quant.layers import quant_layers

INPUT_NAMES = ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask")
OUTPUT_NAME = "sample"
TORCHSCRIPT_MAX_OPSET = 20  # torch's TorchScript exporter emits at most opset 20
_MARKER_DOMAIN = "fraqat"


# ---------------------------------------------------------------------------------------------
# Tracing with marker nodes


class _Marker(torch.autograd.Function):
    """Identity in PyTorch; one ``fraqat::<kind>`` node (attribute ``layer``) in the trace."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: str, layer: str) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def symbolic(g, x, kind: str, layer: str):
        out = g.op(f"{_MARKER_DOMAIN}::{kind}", x, layer_s=layer)
        out.setType(x.type())
        return out


class _WeightMarker(torch.autograd.Function):
    """The layer's weight in PyTorch; in the trace a ``fraqat::WeightQuant`` node of the
    weight's shape reading a scalar placeholder, so no FP32 weight enters the protobuf."""

    @staticmethod
    def forward(ctx, placeholder: torch.Tensor, weight: torch.Tensor, layer: str) -> torch.Tensor:
        return weight

    @staticmethod
    def symbolic(g, placeholder, weight, layer: str):
        out = g.op(f"{_MARKER_DOMAIN}::WeightQuant", placeholder, layer_s=layer)
        out.setType(weight.type())  # keep shapes: Conv's symbolic needs the kernel shape
        return out


def _marked_forward(layer: QuantLayer, name: str, act: bool, weight: bool):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if act:
            x = _Marker.apply(x, "ActQuant", name)
        w = layer.weight
        if weight:
            w = _WeightMarker.apply(torch.zeros(()), w.detach(), name)
        if isinstance(layer, nn.Conv2d):
            return layer._conv_forward(x, w, layer.bias)
        return F.linear(x, w, layer.bias)
    return forward


@contextmanager
def _markers(transformer: nn.Module, weights: dict, acts: dict) -> Iterator[None]:
    layers: dict[str, QuantLayer] = dict(quant_layers(transformer))
    try:
        for name, layer in layers.items():
            layer.forward = _marked_forward(layer, name, name in acts, name in weights)
        yield
    finally:
        for layer in layers.values():
            layer.__dict__.pop("forward", None)


def trace(transformer: nn.Module, example: dict[str, torch.Tensor], opset: int,
          weights: dict, acts: dict) -> onnx.ModelProto:
    """TorchScript-export ``transformer`` with markers, then lift it to ``opset``."""
    buf = io.BytesIO()
    dynamic = {k: {0: "batch"} for k in (*example, OUTPUT_NAME)}
    with _markers(transformer, weights, acts), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(transformer, (), buf,  # type: ignore[arg-type]  # a file object works
                          kwargs={**example, "return_dict": False},
                          dynamo=False, opset_version=min(opset, TORCHSCRIPT_MAX_OPSET),
                          input_names=list(example), output_names=[OUTPUT_NAME],
                          dynamic_axes=dynamic, custom_opsets={_MARKER_DOMAIN: 1})
    model = onnx.load_from_string(buf.getvalue())
    if opset > TORCHSCRIPT_MAX_OPSET:
        model = onnx.version_converter.convert_version(model, opset)
    return model


# ---------------------------------------------------------------------------------------------
# Lowering markers to QDQ


@dataclass
class Lowered:
    """Tensor names the encodings refer to, and the containers used."""

    act_tensors: dict[str, str]       # layer -> the float tensor its input encoding names
    dequantized: dict[str, str]       # that tensor -> the DequantizeLinear output all read
    weight_tensors: dict[str, str]    # layer -> name of the DQ output (the float weight)
    weight_dtypes: dict[str, str]     # layer -> ONNX type name of its codes
    float_readers: dict[str, list[str]] = field(default_factory=dict)  # tensor -> float ops


def lower(model: onnx.ModelProto, weights: dict[str, WeightSpec], acts: dict[str, ActSpec],
          opset: int, weight_dtype: str) -> Lowered:
    """Replace the marker nodes of ``model`` (in place) by QDQ nodes with the trained numbers."""
    graph = model.graph
    marked = _act_markers(graph, acts)
    out = Lowered({}, {}, {}, {})
    rename: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.domain != _MARKER_DOMAIN:
            nodes.append(node)
            continue
        layer = helper.get_attribute_value(node.attribute[0]).decode()
        if node.op_type == "WeightQuant":
            dq_out, new_nodes, new_inits, dtype = _weight_nodes(weights[layer], opset,
                                                                weight_dtype)
            out.weight_tensors[layer], out.weight_dtypes[layer] = dq_out, dtype
        else:
            src = node.input[0]
            out.act_tensors[layer] = src
            new_nodes, new_inits = [], []
            if src not in out.dequantized:  # the tensor's first reader emits its one Q/DQ pair
                new_nodes, new_inits, out.dequantized[src] = _act_nodes(acts[marked[src][0]],
                                                                        src, opset)
            dq_out = out.dequantized[src]
        rename[node.output[0]] = dq_out
        nodes.extend(new_nodes)
        graph.initializer.extend(new_inits)
    out.float_readers = _read_dequantized(nodes, out.dequantized)
    _replace_nodes(graph, nodes, rename)
    _prune(graph)
    _toposort(graph)  # a float reader may sit before the Q/DQ pair it now reads
    _drop_marker_domain(model)
    return out


def _act_markers(graph: onnx.GraphProto, acts: dict[str, ActSpec]) -> dict[str, list[str]]:
    """Tensor -> the layers whose input markers read it; one tensor must have one encoding."""
    readers = defaultdict(list)
    for node in graph.node:
        if node.domain == _MARKER_DOMAIN and node.op_type == "ActQuant":
            readers[node.input[0]].append(helper.get_attribute_value(node.attribute[0]).decode())
    for tensor, layers in readers.items():
        keys = {(acts[n].bits, acts[n].symmetric, acts[n].scale, acts[n].zero_point)
                for n in layers}
        if len(keys) > 1:
            raise FraqatError(
                f"layers {', '.join(layers)} read one tensor ({tensor}) with different "
                "activation qparams; HTP gives a tensor one encoding (allowed: layers reading "
                "one tensor share one quantizer, share_tensor_quantizers)")
    return readers


def _read_dequantized(nodes: list[onnx.NodeProto], dq: dict[str, str]) -> dict[str, list[str]]:
    """Point every float reader of a quantized tensor at its DQ output (``Shape`` excepted)."""
    readers = defaultdict(list)
    for node in nodes:
        if node.op_type in ("QuantizeLinear", "Shape"):
            continue
        for i, name in enumerate(node.input):
            if name in dq:
                node.input[i] = dq[name]
                readers[name].append(node.name or node.op_type)
    return dict(readers)


def _weight_nodes(spec: WeightSpec, opset: int, weight_dtype: str):
    onnx_type, np_type = weight_container(spec, opset, weight_dtype)
    base = f"{spec.layer}.weight"
    codes = numpy_helper.from_array(spec.codes.astype(np_type), f"{base}_quantized")
    scale = numpy_helper.from_array(spec.scale, f"{base}_scale")
    zp = numpy_helper.from_array(spec.zero_point.astype(np_type), f"{base}_zero_point")
    attrs: dict[str, Any] = {}
    if spec.axis is not None:
        attrs["axis"] = spec.axis
    if spec.block_size is not None:
        attrs["block_size"] = spec.block_size
    dq = helper.make_node("DequantizeLinear", [codes.name, scale.name, zp.name], [base],
                          name=f"{base}_DequantizeLinear", **attrs)
    return base, [dq], [codes, scale, zp], TensorProto.DataType.Name(onnx_type)


def _act_nodes(spec: ActSpec, src: str, opset: int):
    _, np_type = act_container(spec, opset)
    base = f"{spec.layer}.input_quantizer"
    scale = numpy_helper.from_array(np.array(spec.scale, np.float32), f"{base}.scale")
    zp = numpy_helper.from_array(np.array(spec.zero_point).astype(np_type), f"{base}.zero_point")
    nodes = [helper.make_node("QuantizeLinear", [src, scale.name, zp.name],
                              [f"{base}.quantized"], name=f"{base}_QuantizeLinear"),
             helper.make_node("DequantizeLinear", [f"{base}.quantized", scale.name, zp.name],
                              [f"{base}.dequantized"], name=f"{base}_DequantizeLinear")]
    return nodes, [scale, zp], f"{base}.dequantized"


def _replace_nodes(graph: onnx.GraphProto, nodes: list, rename: dict[str, str]) -> None:
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    for out in graph.output:
        out.name = rename.get(out.name, out.name)
    del graph.node[:]
    graph.node.extend(nodes)
    kept = {o for n in nodes for o in n.output} | {i.name for i in graph.input}
    stale = [v for v in graph.value_info if v.name not in kept]
    for v in stale:
        graph.value_info.remove(v)


def _toposort(graph: onnx.GraphProto) -> None:
    """Kahn's order, keeping the traced order wherever the dependencies allow it."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    waits = [{producer[x] for x in n.input if x in producer} for n in nodes]
    users = defaultdict(list)
    for i, deps in enumerate(waits):
        for d in deps:
            users[d].append(i)
    ready = [i for i, deps in enumerate(waits) if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waits[u].discard(i)
            if not waits[u]:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise FraqatError("ONNX graph has a cycle after lowering (internal error)")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def _drop_marker_domain(model: onnx.ModelProto) -> None:
    for imp in [i for i in model.opset_import if i.domain == _MARKER_DOMAIN]:
        model.opset_import.remove(imp)


def _prune(graph: onnx.GraphProto) -> None:
    """Drop what the markers' placeholders left unread (constants, initializers)."""
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for i in reversed(range(len(graph.node))):
        node = graph.node[i]
        if node.op_type == "Constant" and not set(node.output) & read:
            del graph.node[i]
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in read:
            del graph.initializer[i]


# ---------------------------------------------------------------------------------------------
# The whole export


@dataclass
class ExportResult:
    model: onnx.ModelProto
    encodings: dict
    weights: dict[str, WeightSpec]
    acts: dict[str, ActSpec]
    lowered: Lowered


def export_transformer(transformer: nn.Module, example: dict[str, torch.Tensor],
                       opset: int = OPSET_21, weight_dtype: str = "int4",
                       weights: dict[str, WeightSpec] | None = None) -> ExportResult:
    """Trace, lower to QDQ and check; returns the ONNX model and its AIMET encodings.

    ``weights``: the integer weight codes to store (e.g. a converted model's,
    :func:`~fraqat.export.specs.packed_weight_specs`); by default derived from ``transformer``.
    """
    check_containers({}, {}, opset, weight_dtype)
    if list(example) != list(INPUT_NAMES):
        raise FraqatError(f"example inputs must be {', '.join(INPUT_NAMES)} in that order")
    transformer = transformer.eval()
    derived, acts = collect_specs(transformer)
    if weights is not None and set(weights) != set(derived):
        raise FraqatError("the given weight codes are for other layers than the transformer's "
                          f"({len(weights)} vs {len(derived)}; allowed: the same model's)")
    weights = derived if weights is None else weights
    check_containers(weights, acts, opset, weight_dtype)  # fail before the slow trace
    model = trace(transformer, example, opset, weights, acts)
    lowered = lower(model, weights, acts, opset, weight_dtype)
    check_model(model)
    return ExportResult(model, enc.aimet_encodings(weights, acts, lowered.act_tensors,
                                                   lowered.weight_tensors),
                        weights, acts, lowered)
