"""What each quantized layer exports: integer weight codes, activation qparams, containers.

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

INT4 weights at opset 21 (``export.weight_dtype: int4``, the default)
    Measured here (onnxruntime 1.32, CPU provider): ``DequantizeLinear`` of INT4 initializers at
    opset 21 runs per tensor, per channel (``axis``) and per block (``block_size``), bit-exact
    against numpy. So 4-bit weights are stored as real INT4 (two codes per byte on disk, the
    deployed size) rather than in an INT8 container. ``weight_dtype: int8`` keeps an INT8
    container holding only the 4-bit codes, for opsets 13-20 or tools without INT4; the codes
    and the encodings (bw 4) are the same. Layers kept at 8 bits always use INT8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
from onnx import TensorProto
from torch import nn

from fraqat.errors import FraqatError
from fraqat.quant.core import integer_codes
from fraqat.quant.layers import quant_layers
from fraqat.quant.packed import PackedWeight, packed_layers

OPSET_21 = 21  # INT4/UINT4 tensors and blocked DequantizeLinear
# A QuantLinear / QuantConv2d: nn.Module and _QuantMixin at once, which mypy cannot spell
QuantLayer = Any

# (bits, signed) -> ONNX container; numpy dtype to build the initializer
CONTAINERS = {(4, True): (TensorProto.INT4, ml_dtypes.int4),
              (4, False): (TensorProto.UINT4, ml_dtypes.uint4),
              (8, True): (TensorProto.INT8, np.int8), (8, False): (TensorProto.UINT8, np.uint8),
              (16, True): (TensorProto.INT16, np.int16),
              (16, False): (TensorProto.UINT16, np.uint16)}


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


def trained_codes(name: str, layer: QuantLayer) -> np.ndarray | None:
    """The integer codes of ``layer``'s deployed weight (None for a float weight)."""
    bits = integer_bits(layer.effective_bits, f"layer {name} weight")
    if bits is None:
        return None
    codes, _ = integer_codes(layer.weight.detach().float().cpu(), bits,
                             granularity=layer.granularity, axis=0,
                             group_size=layer.group_size, symmetric=layer.symmetric)
    return codes.numpy()


def weight_spec(name: str, layer: QuantLayer) -> WeightSpec | None:
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


def packed_weight_spec(name: str, layer: PackedWeight) -> WeightSpec:
    """The :class:`WeightSpec` of a converted layer, read from its packed codes and scales.

    The same numbers :func:`weight_spec` derives from the fake-quant weight (the conversion
    checks that the codes reproduce it), taken from the model that is deployed.
    """
    spec = layer.spec
    bits = integer_bits(spec["bits"], f"layer {name} weight")
    assert bits is not None  # a packed layer always has integer codes
    shape = tuple(spec["shape"])
    scale = layer.weight_scale.detach().float().cpu().numpy()
    zp = (layer.weight_zero_point.cpu().numpy() if not spec["symmetric"]
          else np.zeros_like(scale, dtype=np.int64))
    axis, block = _layout(name, spec["granularity"], shape, spec["group_size"])
    if block is not None:
        scale, zp = scale.reshape((shape[0], -1) + (1,) * (len(shape) - 2)), zp.reshape(
            (shape[0], -1) + (1,) * (len(shape) - 2))
    elif axis is None:
        scale, zp = scale.reshape(()), zp.reshape(())
    return WeightSpec(name, bits, spec["symmetric"], layer.codes().cpu().numpy(),
                      scale.astype(np.float32), zp.astype(np.int64), axis, block)


def packed_weight_specs(converted: nn.Module) -> dict[str, WeightSpec]:
    """:func:`packed_weight_spec` of every packed layer of a converted transformer."""
    return {name: packed_weight_spec(name, layer) for name, layer in packed_layers(converted)}


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


def act_spec(name: str, layer: QuantLayer) -> ActSpec | None:
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


def container(bits: int, signed: bool, opset: int, what: str, exact: bool) -> tuple[int, type]:
    """The smallest ONNX integer type for ``bits``-bit codes (``exact``: same width only)."""
    widths = [w for w in (4, 8, 16) if w >= bits and (w == 8 or opset >= OPSET_21)]
    if exact:
        widths = [w for w in widths if w == bits]
    if not widths:
        allowed = "8" + (", 4, 16" if opset >= OPSET_21 else " (4 and 16 need opset >= 21)")
        raise FraqatError(f"{what}: {bits}-bit codes have no ONNX integer type at opset {opset} "
                          f"(allowed bit-widths: {allowed})")
    return CONTAINERS[(widths[0], signed)]


def weight_container(spec: WeightSpec, opset: int, weight_dtype: str) -> tuple[int, type]:
    if spec.bits <= 4 and weight_dtype == "int8":
        return CONTAINERS[(8, spec.symmetric)]
    return container(spec.bits, spec.symmetric, opset, f"layer {spec.layer} weight", exact=False)


def act_container(spec: ActSpec, opset: int) -> tuple[int, type]:
    return container(spec.bits, spec.symmetric, opset, f"layer {spec.layer} activation", True)


def check_containers(weights: dict[str, WeightSpec], acts: dict[str, ActSpec], opset: int,
                     weight_dtype: str) -> None:
    """Fail with one line, before the slow trace, if any spec has no ONNX form at ``opset``."""
    if weight_dtype == "int4" and opset < OPSET_21:
        raise FraqatError(f"export.weight_dtype=int4 needs export.opset >= 21 (got {opset}; "
                          "allowed: opset 21+, or weight_dtype int8)")
    for spec in weights.values():
        weight_container(spec, opset, weight_dtype)
        if spec.block_size is not None and opset < OPSET_21:
            raise FraqatError(f"layer {spec.layer}: per-group weights need the blocked "
                              f"DequantizeLinear of opset 21 (got export.opset={opset}; "
                              "allowed: opset >= 21, or granularity tensor/channel)")
    for act in acts.values():
        act_container(act, opset)
