"""Export a FraQAT-quantized diffusers transformer for Qualcomm's HTP: ONNX QDQ + AIMET encodings.

What is written
    ``model.onnx``: the transformer's forward (``hidden_states``, ``encoder_hidden_states``,
    ``timestep``, ``encoder_attention_mask`` -> ``sample``; batch dimension dynamic). The prompt
    encoder stays outside, as a real text encoder would. Every quantized weight is an integer
    initializer (the trained codes, :func:`fraqat.quant.integer_codes`) + scale feeding a
    ``DequantizeLinear`` whose output is named ``<layer>.weight``; every quantized layer input
    gets a ``QuantizeLinear``/``DequantizeLinear`` pair with its calibrated INT8 scale/zero point.
    ``model.encodings``: the same numbers in AIMET's encoding format 1.0.0, keyed by those ONNX
    tensor names, for ``qnn-onnx-converter --quantization_overrides``.

Decision: INT4 weights at opset 21 (``export.weight_dtype: int4``, the default)
    Measured here (onnxruntime 1.32, CPU provider): ``DequantizeLinear`` of INT4 initializers at
    opset 21 runs per tensor, per channel (``axis``) and per block (``block_size``), bit-exact
    against numpy. So 4-bit weights are stored as real INT4 (two codes per byte on disk, the
    deployed size) rather than in an INT8 container. ``weight_dtype: int8`` keeps an INT8
    container holding only the 4-bit codes, for opsets 13-20 or tools without INT4; the codes
    and the encodings (bw 4) are the same. Layers kept at 8 bits always use INT8.

Fractional bits, granularity, symmetry
    The deployed model sits at an integer bit-width, where the FraQAT grid is the standard
    narrow-range INT-b grid ([-7, 7] at 4 bits); a fractional bit-width has no INT container
    and no AIMET ``bw``, so it is refused with one line. Per-tensor and per-channel (``axis=0``)
    weights map directly; per-group weights become blocked ``DequantizeLinear`` (``axis=1``,
    ``block_size`` = group size; AIMET ``PER_BLOCK``) where a group runs along input channels
    (Linear, 1x1 conv) or spans a whole output channel (then it is per channel); groups that
    cut through a kxk kernel have no ONNX/AIMET form and are refused. Asymmetric ("wide
    range") weights use UINT containers with their zero points. Symmetric activations use
    INT8 with zero point 0: only an input below the calibrated range can land on -128, one
    step past the [-127, 127] clamp of training.

One encoding per tensor
    FraQAT fake-quantizes each layer's *input*; HTP and AIMET attach an encoding to a *tensor*.
    Where a quantized layer input is also read by a float op (in Sana the residual stream
    entering ``attn2.to_q``), the device quantizes that reader too. The QDQ graph keeps
    PyTorch's semantics (and is verified against it); :func:`per_tensor_semantics` builds the
    device's reading, whose gap to PyTorch :func:`verify` reports.

How the graph is built
    torch's TorchScript exporter (``dynamo=False``; onnxscript is not installed) traces the
    model with each quantized layer temporarily replaced by marker nodes ``fraqat::ActQuant`` /
    ``fraqat::WeightQuant`` carrying the layer name, so no tensor has to be matched to a layer
    by guesswork. The markers are then lowered to standard QDQ nodes with the trained numbers.
    The exporter stops at opset 20; ``onnx.version_converter`` lifts the graph to the target
    opset before the opset-21 nodes (INT4, blocked ``DequantizeLinear``) are inserted. The
    whole FP32 graph is held as one protobuf, so a transformer over 2 GB of FP32 weights
    (Sana-600M and larger) does not export this way.
"""

from __future__ import annotations

import io
import math
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from fraqat.errors import FraqatError
from fraqat.modules import quant_layers
from fraqat.quant import integer_codes

INPUT_NAMES = ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask")
OUTPUT_NAME = "sample"
TORCHSCRIPT_MAX_OPSET = 20  # torch's TorchScript exporter emits at most opset 20
OPSET_21 = 21               # INT4/UINT4 tensors and blocked DequantizeLinear
AIMET_VERSION = "1.0.0"
_MARKER_DOMAIN = "fraqat"

# (bits, signed) -> ONNX container; numpy dtype to build the initializer
_CONTAINERS = {(4, True): (TensorProto.INT4, ml_dtypes.int4),
               (4, False): (TensorProto.UINT4, ml_dtypes.uint4),
               (8, True): (TensorProto.INT8, np.int8), (8, False): (TensorProto.UINT8, np.uint8),
               (16, True): (TensorProto.INT16, np.int16),
               (16, False): (TensorProto.UINT16, np.uint16)}


# ---------------------------------------------------------------------------------------------
# What each quantized layer exports


@dataclass(frozen=True)
class WeightSpec:
    """A layer's weight as the integer codes the exporter stores, with their qparams.

    ``scale``/``zero_point`` have the shape ``DequantizeLinear`` wants: scalar (per tensor),
    ``(out,)`` with ``axis=0`` (per channel) or the weight's rank with the input axis divided
    into blocks (per group, ``block_size`` = group size along ``axis=1``).
    """

    layer: str
    bits: int
    symmetric: bool
    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    block_size: int | None

    @property
    def enc_type(self) -> str:
        if self.block_size is not None:
            return "PER_BLOCK"
        return "PER_CHANNEL" if self.axis is not None else "PER_TENSOR"


@dataclass(frozen=True)
class ActSpec:
    """A layer's per-tensor input quantizer after calibration: ``q = round(x/s) + z``."""

    layer: str
    bits: int
    symmetric: bool
    scale: float
    zero_point: int


def integer_bits(bits: float | None, what: str) -> int | None:
    """``bits`` as an int; a fractional width has no INT container (one-line error)."""
    if bits is None:
        return None
    if not float(bits).is_integer():
        raise FraqatError(f"{what}: bits={bits:g} is fractional; the deployed model must sit at "
                          "an integer bit-width (allowed: 2, 3, 4, ..., 16; finish the schedule)")
    return int(bits)


def weight_spec(name: str, layer: nn.Module) -> WeightSpec | None:
    """The integer codes and qparams of ``layer``'s weight, or None for a float weight."""
    bits = integer_bits(layer.effective_bits, f"layer {name} weight")
    if bits is None:
        return None
    w = layer.weight.detach().float().cpu()
    codes, qp = integer_codes(w, bits, granularity=layer.granularity, axis=0,
                              group_size=layer.group_size, symmetric=layer.symmetric)
    scale, zp = qp.scale.reshape(-1).numpy(), qp.zero_point.reshape(-1).numpy()
    axis, block = _layout(name, layer.granularity, tuple(w.shape), layer.group_size)
    if block is not None:  # (out * blocks,) -> (out, blocks, 1, ...) like the weight's rank
        shape = (w.shape[0], -1) + (1,) * (w.dim() - 2)
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    elif axis is None:
        scale, zp = scale.reshape(()), zp.reshape(())
    return WeightSpec(name, bits, layer.symmetric, codes.numpy(), scale.astype(np.float32),
                      zp.astype(np.int64), axis, block)


def _layout(name: str, granularity: str, shape: tuple[int, ...],
            group_size: int) -> tuple[int | None, int | None]:
    """(axis, block_size) of the DequantizeLinear that reproduces fraqat's grouping exactly."""
    if granularity == "tensor":
        return None, None
    if granularity == "channel":
        return 0, None
    row = math.prod(shape[1:])
    if row <= group_size:  # one group per output channel: identical to per channel
        return 0, None
    if math.prod(shape[2:]) != 1:
        raise FraqatError(
            f"layer {name}: per-group weights of a {'x'.join(map(str, shape[2:]))} conv span "
            "kernel positions, which ONNX blocks (along input channels only) cannot express "
            "(allowed: granularity tensor or channel, or a group_size >= in*kh*kw)")
    return 1, group_size


def act_spec(name: str, layer: nn.Module) -> ActSpec | None:
    """The calibrated scale/zero point of ``layer``'s input quantizer, or None (float input)."""
    q = layer.input_quantizer
    bits = integer_bits(q.bits, f"layer {name} activation")
    if bits is None:
        return None
    if not bool(q.calibrated):
        raise FraqatError(f"layer {name}: activation quantizer was never calibrated "
                          "(run calibrate_activations / the train stage first)")
    qp = q.qparams()
    return ActSpec(name, bits, q.symmetric, float(qp.scale.detach()), int(qp.zero_point))


def collect_specs(transformer: nn.Module) -> tuple[dict[str, WeightSpec], dict[str, ActSpec]]:
    weights, acts = {}, {}
    for name, layer in quant_layers(transformer):
        if (w := weight_spec(name, layer)) is not None:
            weights[name] = w
        if (a := act_spec(name, layer)) is not None:
            acts[name] = a
    if not weights and not acts:
        raise FraqatError("the transformer has no quantized layers (nothing to export for HTP)")
    return weights, acts


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
        out.setType(x.type())  # keep shapes: Conv's symbolic needs the weight's kernel shape
        return out


def _marked_forward(layer: nn.Module, name: str, act: bool, weight: bool):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if act:
            x = _Marker.apply(x, "ActQuant", name)
        w = _Marker.apply(layer.weight, "WeightQuant", name) if weight else layer.weight
        if isinstance(layer, nn.Conv2d):
            return layer._conv_forward(x, w, layer.bias)
        return F.linear(x, w, layer.bias)
    return forward


@contextmanager
def _markers(transformer: nn.Module, weights: dict, acts: dict) -> Iterator[None]:
    layers = dict(quant_layers(transformer))
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
        torch.onnx.export(transformer, (), buf, kwargs={**example, "return_dict": False},
                          dynamo=False, opset_version=min(opset, TORCHSCRIPT_MAX_OPSET),
                          input_names=list(example), output_names=[OUTPUT_NAME],
                          dynamic_axes=dynamic, custom_opsets={_MARKER_DOMAIN: 1})
    model = onnx.load_from_string(buf.getvalue())
    if opset > TORCHSCRIPT_MAX_OPSET:
        model = onnx.version_converter.convert_version(model, opset)
    return model


# ---------------------------------------------------------------------------------------------
# Lowering markers to QDQ


def _container(bits: int, signed: bool, opset: int, what: str,
               exact: bool) -> tuple[int, type]:
    """The smallest ONNX integer type for ``bits``-bit codes (``exact``: same width only)."""
    widths = [w for w in (4, 8, 16) if w >= bits and (w == 8 or opset >= OPSET_21)]
    if exact:
        widths = [w for w in widths if w == bits]
    if not widths:
        allowed = "8" + (", 4, 16" if opset >= OPSET_21 else " (4 and 16 need opset >= 21)")
        raise FraqatError(f"{what}: {bits}-bit codes have no ONNX integer type at opset {opset} "
                          f"(allowed bit-widths: {allowed})")
    return _CONTAINERS[(widths[0], signed)]


def _weight_container(spec: WeightSpec, opset: int, weight_dtype: str) -> tuple[int, type]:
    signed = spec.symmetric
    if spec.bits <= 4 and weight_dtype == "int8":
        return _CONTAINERS[(8, signed)]
    return _container(spec.bits, signed, opset, f"layer {spec.layer} weight", exact=False)


@dataclass
class Lowered:
    """Tensor names the encodings refer to, and the containers used."""

    act_tensors: dict[str, str]       # layer -> name of the float tensor its Q node reads
    weight_tensors: dict[str, str]    # layer -> name of the DQ output (the float weight)
    weight_dtypes: dict[str, str]     # layer -> ONNX type name of its codes


def lower(model: onnx.ModelProto, weights: dict[str, WeightSpec], acts: dict[str, ActSpec],
          opset: int, weight_dtype: str) -> Lowered:
    """Replace the marker nodes of ``model`` (in place) by QDQ nodes with the trained numbers."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    act_inputs = _act_input_names(graph, acts)
    rename: dict[str, str] = {}
    nodes, out = [], Lowered({}, {}, {})
    for node in graph.node:
        if node.domain != _MARKER_DOMAIN:
            nodes.append(node)
            continue
        layer = helper.get_attribute_value(node.attribute[0]).decode()
        if node.op_type == "WeightQuant":
            spec = weights[layer]
            graph.initializer.remove(inits.pop(node.input[0]))
            dq_out, new_nodes, new_inits, dtype = _weight_nodes(spec, opset, weight_dtype)
            out.weight_tensors[layer], out.weight_dtypes[layer] = dq_out, dtype
        else:
            spec = acts[layer]
            src = act_inputs[layer]
            new_nodes, new_inits, dq_out = _act_nodes(spec, node.input[0], src, opset)
            out.act_tensors[layer] = src
        rename[node.output[0]] = dq_out
        nodes.extend(new_nodes)
        graph.initializer.extend(new_inits)
    _replace_nodes(graph, nodes, rename)
    _drop_marker_domain(model)
    return out


def _act_input_names(graph: onnx.GraphProto, acts: dict[str, ActSpec]) -> dict[str, str]:
    """Name of the tensor each layer's Q reads (and the encodings key).

    Layers reading one tensor (q/k/v projections) share it when their qparams agree, the
    normal case since they were calibrated on the same values; a tensor has one encoding on
    HTP. If they disagree (learned scales), each gets its own ``<layer>.input`` Identity copy
    so the graph stays exact; a converter that folds Identity will then have to pick one.
    """
    readers = defaultdict(list)
    for node in graph.node:
        if node.domain == _MARKER_DOMAIN and node.op_type == "ActQuant":
            layer = helper.get_attribute_value(node.attribute[0]).decode()
            readers[node.input[0]].append(layer)
    names = {}
    for tensor, layers in readers.items():
        keys = {(acts[n].bits, acts[n].symmetric, acts[n].scale, acts[n].zero_point)
                for n in layers}
        for n in layers:
            names[n] = tensor if len(keys) == 1 else f"{n}.input"
    return names


def _check_containers(weights: dict[str, WeightSpec], acts: dict[str, ActSpec], opset: int,
                      weight_dtype: str) -> None:
    for spec in weights.values():
        _weight_container(spec, opset, weight_dtype)
        if spec.block_size is not None and opset < OPSET_21:
            raise FraqatError(f"layer {spec.layer}: per-group weights need the blocked "
                              f"DequantizeLinear of opset 21 (got export.opset={opset}; "
                              "allowed: opset >= 21, or granularity tensor/channel)")
    for spec in acts.values():
        _container(spec.bits, spec.symmetric, opset, f"layer {spec.layer} activation", True)


def _weight_nodes(spec: WeightSpec, opset: int, weight_dtype: str):
    onnx_type, np_type = _weight_container(spec, opset, weight_dtype)
    base = f"{spec.layer}.weight"
    codes = numpy_helper.from_array(spec.codes.astype(np_type), f"{base}_quantized")
    scale = numpy_helper.from_array(spec.scale, f"{base}_scale")
    zp = numpy_helper.from_array(spec.zero_point.astype(np_type), f"{base}_zero_point")
    attrs = {}
    if spec.axis is not None:
        attrs["axis"] = spec.axis
    if spec.block_size is not None:
        attrs["block_size"] = spec.block_size
    dq = helper.make_node("DequantizeLinear", [codes.name, scale.name, zp.name], [base],
                          name=f"{base}_DequantizeLinear", **attrs)
    return base, [dq], [codes, scale, zp], TensorProto.DataType.Name(onnx_type)


def _act_nodes(spec: ActSpec, marker_input: str, src: str, opset: int):
    onnx_type, np_type = _container(spec.bits, spec.symmetric, opset,
                                    f"layer {spec.layer} activation", exact=True)
    base = f"{spec.layer}.input_quantizer"
    scale = numpy_helper.from_array(np.array(spec.scale, np.float32), f"{base}.scale")
    zp = numpy_helper.from_array(np.array(spec.zero_point).astype(np_type), f"{base}.zero_point")
    nodes = []
    if src != marker_input:
        nodes.append(helper.make_node("Identity", [marker_input], [src], name=f"{src}_Identity"))
    nodes += [helper.make_node("QuantizeLinear", [src, scale.name, zp.name],
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


def _drop_marker_domain(model: onnx.ModelProto) -> None:
    for imp in [i for i in model.opset_import if i.domain == _MARKER_DOMAIN]:
        model.opset_import.remove(imp)


# ---------------------------------------------------------------------------------------------
# AIMET encodings


def aimet_encodings(weights: dict[str, WeightSpec], acts: dict[str, ActSpec],
                    lowered: Lowered) -> dict:
    """AIMET encoding format 1.0.0 (what aimet-onnx 2.x ``export`` writes).

    AIMET dequantizes ``x = (q + offset) * scale`` with ``q`` unsigned in [0, 2**bw - 1], so a
    symmetric signed grid has ``offset = -2**(bw-1)`` (-8 at 4 bits, -128 at 8 bits: the
    narrow-range codes [-7, 7] lie inside and -8 is never used) and an asymmetric one
    ``offset = -zero_point``.
    """
    params = [_param_encoding(lowered.weight_tensors[n], s) for n, s in weights.items()]
    seen: dict[str, dict] = {}
    for name, spec in acts.items():
        seen.setdefault(lowered.act_tensors[name], _act_encoding(lowered.act_tensors[name], spec))
    return {"version": AIMET_VERSION, "activation_encodings": list(seen.values()),
            "param_encodings": params}


def _offsets(bits: int, symmetric: bool, zero_point: np.ndarray) -> list[int]:
    if symmetric:
        return [-(2 ** (bits - 1))] * zero_point.size
    return [-int(z) for z in zero_point.reshape(-1)]


def _param_encoding(tensor: str, spec: WeightSpec) -> dict:
    enc = {"name": tensor, "dtype": "INT", "enc_type": spec.enc_type, "bw": spec.bits,
           "is_sym": spec.symmetric, "scale": [float(s) for s in spec.scale.reshape(-1)],
           "offset": _offsets(spec.bits, spec.symmetric, spec.zero_point)}
    if spec.block_size is not None:
        enc["block_size"] = spec.block_size
    return enc


def _act_encoding(tensor: str, spec: ActSpec) -> dict:
    return {"name": tensor, "dtype": "INT", "enc_type": "PER_TENSOR", "bw": spec.bits,
            "is_sym": spec.symmetric, "scale": [spec.scale],
            "offset": _offsets(spec.bits, spec.symmetric, np.array([spec.zero_point]))}


# ---------------------------------------------------------------------------------------------
# The whole export, and reading it back


@dataclass
class ExportResult:
    model: onnx.ModelProto
    encodings: dict
    weights: dict[str, WeightSpec]
    acts: dict[str, ActSpec]
    lowered: Lowered


def export_transformer(transformer: nn.Module, example: dict[str, torch.Tensor],
                       opset: int = OPSET_21, weight_dtype: str = "int4") -> ExportResult:
    """Trace, lower to QDQ and check; returns the ONNX model and its AIMET encodings."""
    if weight_dtype == "int4" and opset < OPSET_21:
        raise FraqatError(f"export.weight_dtype=int4 needs export.opset >= 21 (got {opset}; "
                          "allowed: opset 21+, or weight_dtype int8)")
    if list(example) != list(INPUT_NAMES):
        raise FraqatError(f"example inputs must be {', '.join(INPUT_NAMES)} in that order")
    transformer = transformer.eval()
    weights, acts = collect_specs(transformer)
    _check_containers(weights, acts, opset, weight_dtype)  # fail before the slow trace
    model = trace(transformer, example, opset, weights, acts)
    lowered = lower(model, weights, acts, opset, weight_dtype)
    onnx.checker.check_model(model, full_check=True)
    return ExportResult(model, aimet_encodings(weights, acts, lowered), weights, acts, lowered)


def onnx_weight_codes(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """``<layer>.weight_quantized`` initializers as int arrays (INT4 unpacked)."""
    suffix = ".weight_quantized"
    return {t.name[: -len(suffix)]: numpy_helper.to_array(t).astype(np.int32)
            for t in model.graph.initializer if t.name.endswith(suffix)}


def count_code_mismatches(model: onnx.ModelProto, transformer: nn.Module) -> tuple[int, int]:
    """(mismatching, total) weight codes: ONNX vs integer_codes of the trained weights."""
    stored = onnx_weight_codes(model)
    bad = total = 0
    for name, layer in quant_layers(transformer):
        bits = integer_bits(layer.effective_bits, f"layer {name} weight")
        if bits is None:
            continue
        codes, _ = integer_codes(layer.weight.detach().float().cpu(), bits,
                                 granularity=layer.granularity, axis=0,
                                 group_size=layer.group_size, symmetric=layer.symmetric)
        want = codes.numpy()
        got = stored.get(name)
        total += want.size
        bad += want.size if got is None or got.shape != want.shape else int((got != want).sum())
    return bad, total


def qdq_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Number of activation QuantizeLinear and of weight / activation DequantizeLinear nodes."""
    inits = {t.name for t in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    return {"quantize": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
            "dequantize_weight": sum(n.input[0] in inits for n in dq),
            "dequantize_activation": sum(n.input[0] not in inits for n in dq)}


def run_onnx(model: onnx.ModelProto | str | Path,
             inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """Run the exported graph with onnxruntime's CPU provider, default optimizations."""
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    feed = {k: v.detach().cpu().numpy() for k, v in inputs.items()}
    return sess.run([OUTPUT_NAME], feed)[0]


@torch.no_grad()
def torch_forward(transformer: nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """The PyTorch fake-quant forward the ONNX graph must reproduce."""
    return transformer(**inputs, return_dict=False)[0].float().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Verification


@dataclass(frozen=True)
class Tolerance:
    """How close onnxruntime must come to the PyTorch fake-quant forward, and why.

    Both evaluate the same quantized function in FP32, but with other kernels and operation
    order (ONNX ``QuantizeLinear`` divides by the scale where fraqat multiplies by its inverse;
    LayerNorm/attention reductions differ in the last ulp). A value that sits within an ulp of a
    rounding boundary then lands on the neighbouring INT8 code: a flip of exactly one step.
    Measured on the tiny Sana: the first flipping layer had 1 flip in 65,536 codes, later
    layers inherit more (at most 0.09 % of a layer's codes), never more than one step. So:

    * per quantized activation, at most ``max_flip_fraction`` of the codes differ (or
      ``min_flips`` codes, for tiny tensors); a wrong scale or zero point flips most codes;
    * the output's max absolute error is at most ``abs_steps`` of the largest activation step
      (one flip at the last layer's input moves an output by ``step * |w|``, with |w| < 1
      here; measured 0.23 steps) and its relative L2 error at most ``rel_l2`` (measured 9e-4);
    * the weight codes are compared exactly: they are stored, not recomputed.
    """

    max_flip_fraction: float = 0.01
    min_flips: int = 2
    abs_steps: float = 4.0
    rel_l2: float = 0.01


def run_probed(model: onnx.ModelProto, inputs: dict[str, torch.Tensor],
               layers: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """onnxruntime output plus each layer's dequantized input (one session, one run)."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    names = [OUTPUT_NAME] + [f"{n}.input_quantizer.dequantized" for n in layers]
    for tensor in names[1:]:
        probe.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    out, *acts = sess.run(names, {k: v.detach().cpu().numpy() for k, v in inputs.items()})
    return out, dict(zip(layers, acts, strict=True))


@torch.no_grad()
def torch_probed(transformer: nn.Module, inputs: dict[str, torch.Tensor],
                 layers: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """PyTorch output plus each layer's fake-quantized input, from forward hooks."""
    seen: dict[str, np.ndarray] = {}
    modules = dict(quant_layers(transformer))
    hooks = [modules[n].input_quantizer.register_forward_hook(
        lambda mod, args, out, n=n: seen.__setitem__(n, out.float().cpu().numpy()))
        for n in layers]
    try:
        out = torch_forward(transformer, inputs)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def code_flips(got: dict[str, np.ndarray], want: dict[str, np.ndarray],
               acts: dict[str, ActSpec]) -> dict[str, dict]:
    """Per layer: how many INT8 codes of its input differ, and by how many steps at most."""
    out = {}
    for n, spec in acts.items():
        steps = np.rint(np.abs(got[n] - want[n]) / spec.scale)
        out[n] = {"flips": int((steps > 0).sum()), "codes": int(steps.size),
                  "max_steps": int(steps.max(initial=0))}
    return out


def verify(result: ExportResult, transformer: nn.Module, inputs: dict[str, torch.Tensor],
           tol: Tolerance = Tolerance()) -> dict:
    """Run the export in onnxruntime against PyTorch; the report, with ``failures`` listed."""
    got, got_acts = run_probed(result.model, inputs, list(result.acts))
    want, want_acts = torch_probed(transformer, inputs, list(result.acts))
    diff = np.abs(got.astype(np.float64) - want)
    max_step = max((a.scale for a in result.acts.values()), default=0.0)
    output = {"max_abs_error": float(diff.max()),
              "rel_l2_error": float(np.linalg.norm(diff) / max(np.linalg.norm(want), 1e-12)),
              "max_abs_tolerance": tol.abs_steps * max_step, "rel_l2_tolerance": tol.rel_l2,
              "output_abs_max": float(np.abs(want).max()), "largest_activation_step": max_step}
    layers = code_flips(got_acts, want_acts, result.acts)
    bad_codes, n_codes = count_code_mismatches(result.model, transformer)
    counts = qdq_counts(result.model)
    worst = max(layers, key=lambda n: layers[n]["flips"] / layers[n]["codes"], default=None)
    report = {"output": output,
              "activations": {"flipped_codes": sum(v["flips"] for v in layers.values()),
                              "codes": sum(v["codes"] for v in layers.values()),
                              "max_step_difference": max((v["max_steps"] for v in layers.values()),
                                                         default=0),
                              "worst_layer": worst,
                              "worst_layer_flip_fraction": (layers[worst]["flips"]
                                                            / layers[worst]["codes"]
                                                            if worst else 0.0)},
              "weights": {"code_mismatches": bad_codes, "codes": n_codes},
              "qdq_nodes": counts,
              "num_quantized_layers": len(dict(quant_layers(transformer))),
              "num_weight_quantized": len(result.weights),
              "num_activation_quantized": len(result.acts),
              "per_tensor_semantics": _per_tensor_gap(result, inputs, want)}
    report["failures"] = _failures(report, layers, tol)
    return report


def _per_tensor_gap(result: ExportResult, inputs: dict[str, torch.Tensor],
                    want: np.ndarray) -> dict:
    """How far HTP's one-encoding-per-tensor reading is from PyTorch (reported, not checked)."""
    shared = float_readers(result.model, result.lowered)
    got = run_onnx(per_tensor_semantics(result.model, result.lowered), inputs) if shared else want
    diff = np.abs(got.astype(np.float64) - want)
    return {"tensors_also_read_unquantized": shared, "max_abs_error": float(diff.max()),
            "rel_l2_error": float(np.linalg.norm(diff) / max(np.linalg.norm(want), 1e-12))}


def _failures(report: dict, layers: dict[str, dict], tol: Tolerance) -> list[str]:
    out, fails = report["output"], []
    if not out["max_abs_error"] <= out["max_abs_tolerance"]:
        fails.append(f"output max abs error {out['max_abs_error']:.3g} > "
                     f"{out['max_abs_tolerance']:.3g}")
    if not out["rel_l2_error"] <= out["rel_l2_tolerance"]:
        fails.append(f"output relative L2 error {out['rel_l2_error']:.3g} > {tol.rel_l2:g}")
    for name, v in layers.items():
        if v["flips"] > max(tol.max_flip_fraction * v["codes"], tol.min_flips):
            fails.append(f"{v['flips']}/{v['codes']} activation codes of {name} differ")
    if report["weights"]["code_mismatches"]:
        fails.append(f"{report['weights']['code_mismatches']} weight codes differ from the "
                     "trained ones")
    q = report["qdq_nodes"]
    if (q["dequantize_weight"], q["quantize"]) != (report["num_weight_quantized"],
                                                   report["num_activation_quantized"]):
        fails.append(f"QDQ nodes {q} do not match {report['num_weight_quantized']} quantized "
                     f"weights / {report['num_activation_quantized']} quantized inputs")
    return fails


# ---------------------------------------------------------------------------------------------
# Sizes


def size_report(transformer: nn.Module, weights: dict[str, WeightSpec]) -> dict[str, int]:
    """FP32 bytes of the transformer vs the same with quantized weights packed at their bits.

    Packed = codes at ``bits`` bits each (two 4-bit codes per byte) + one FP32 scale per
    group (+ packed zero points when asymmetric); everything else (biases, norms, tables)
    stays FP32. Activation quantizer state (one scale per layer) is left out of both.
    """
    params = {k: p for k, p in transformer.named_parameters() if ".input_quantizer." not in k}
    fp32 = 4 * sum(p.numel() for p in params.values())
    w_fp32 = w_packed = 0
    for spec in weights.values():
        w_fp32 += 4 * spec.codes.size
        w_packed += math.ceil(spec.codes.size * spec.bits / 8) + 4 * spec.scale.size
        if not spec.symmetric:
            w_packed += math.ceil(spec.zero_point.size * spec.bits / 8)
    return {"fp32_bytes": fp32, "packed_bytes": fp32 - w_fp32 + w_packed,
            "quantized_weight_fp32_bytes": w_fp32, "quantized_weight_packed_bytes": w_packed}


def float_readers(model: onnx.ModelProto, lowered: Lowered) -> list[str]:
    """Quantized layer inputs that other ops also read in float (``Shape`` reads excepted).

    FraQAT quantizes a layer's *input*; HTP (and AIMET's simulation) give a *tensor* one
    encoding, so there these readers see the INT8 values too. In Sana that is the residual
    stream entering cross-attention (``attn2.to_q``'s input).
    """
    tensors = set(lowered.act_tensors.values())
    return sorted({i for n in model.graph.node if n.op_type not in ("QuantizeLinear", "Shape")
                   for i in n.input if i in tensors})


def per_tensor_semantics(model: onnx.ModelProto, lowered: Lowered) -> onnx.ModelProto:
    """``model`` with every reader of a quantized tensor rewired to its dequantized value.

    This is how HTP/AIMET execute ``model.encodings`` (see :func:`float_readers`). Measured on
    a random tiny Sana (aimet-onnx 2.42): AIMET's QuantizationSimModel with these encodings
    matches it to 9e-8 / 1e-4 relative L2 (per-tensor / per-channel weights), while both
    differ from the PyTorch fake-quant forward by 0.7-0.8 % through that residual.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    dq = {}
    for layer, tensor in lowered.act_tensors.items():
        dq.setdefault(tensor, f"{layer}.input_quantizer.dequantized")
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "Shape"):
            continue
        for i, name in enumerate(node.input):
            node.input[i] = dq.get(name, name)
    _toposort(model.graph)  # a rewired reader may sit before the Q/DQ pair it now reads
    return model


def _toposort(graph: onnx.GraphProto) -> None:
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not set(n.input) <= ready]
        done = [n for n in pending if set(n.input) <= ready]
        if not done:
            raise FraqatError("ONNX graph has a cycle after rewiring (internal error)")
        ordered += done
        ready.update(o for n in done for o in n.output)
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def strip_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float graph the encodings describe: weights dequantized, activation QDQ removed.

    Tensor names are kept (``<layer>.weight`` becomes an FP32 initializer), so this model plus
    ``model.encodings`` is what AIMET's own export produces and what
    ``qnn-onnx-converter --quantization_overrides`` reads.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
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
    still = {i for n in keep for i in n.input}
    for name in used - still:
        if name in inits:
            graph.initializer.remove(inits[name])
    return model


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
