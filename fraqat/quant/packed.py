"""Converted W4A8 layers: packed integer weight codes that dequantize on the fly.

The end of QAT (torchao's prepare -> train -> *convert*): :func:`convert_model` swaps every
fake-quant :class:`~fraqat.quant.layers.QuantLinear` / ``QuantConv2d`` for a
:class:`PackedLinear` / :class:`PackedConv2d` holding

* ``weight_packed``: the integer codes of the deployed weight, two 4-bit codes per byte
  (:mod:`fraqat.quant.packing`; 8-bit layers one per byte),
* ``weight_scale`` (fp32, one per tensor / output channel / group, as trained) and, for the
  asymmetric grid, ``weight_zero_point``,
* the layer's own ``input_quantizer`` (INT8 scale and zero point, shared between readers of
  one tensor exactly as in training),

and no float weight. The forward rebuilds the weight as ``(code - z) * s`` in fp32, the very
arithmetic of the fake-quant reference, so on the CPU the converted model's outputs equal the
fake-quant model's bit for bit (:func:`convert_model` checks every weight while converting).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fraqat.quant import ops, packing
from fraqat.quant.activations import ActQuantizer
from fraqat.quant.core import _group_view, _ungroup, code_range, integer_codes
from fraqat.quant.layers import QuantConv2d, QuantLinear, quant_layers


class PackedWeight(nn.Module):
    """Packed weight codes + qparams + the input quantizer; subclasses add the matmul."""

    weight_packed: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor

    def __init__(self, spec: dict[str, Any], input_quantizer: ActQuantizer) -> None:
        super().__init__()
        self.spec = dict(spec)
        self.weight_shape = tuple(spec["shape"])
        self.numel = int(torch.Size(self.weight_shape).numel())
        self.qmin, self.container = int(spec["qmin"]), int(spec["container"])
        self.granularity, self.group_size = spec["granularity"], int(spec["group_size"])
        groups = ops.num_groups(self.weight_shape, self.granularity, self.group_size)
        stored = packing.packed_numel(self.numel, self.container)
        self.register_buffer("weight_packed",
                             torch.zeros(stored, dtype=packing.STORAGE[self.container]))
        self.register_buffer("weight_scale", torch.ones(groups))
        if not spec["symmetric"]:
            self.register_buffer("weight_zero_point", torch.zeros(groups, dtype=torch.int32))
        self.bias = nn.Parameter(torch.zeros(self.weight_shape[0])) if spec["bias"] else None
        self.input_quantizer = input_quantizer

    @torch.no_grad()
    def fill(self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
             bias: torch.Tensor | None) -> None:
        self.weight_packed = packing.pack(codes, self.qmin, self.container)
        self.weight_scale = scale.reshape(-1).float().clone()
        if not self.spec["symmetric"]:
            self.weight_zero_point = zero_point.reshape(-1).to(torch.int32).clone()
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)

    def codes(self) -> torch.Tensor:
        """The integer weight codes, int32, in the weight's shape."""
        flat = packing.unpack(self.weight_packed, self.qmin, self.container, self.numel)
        return flat.view(self.weight_shape)

    def dequantized_weight(self) -> torch.Tensor:
        """``(code - z) * s`` per group in the scale's dtype, cast to the matmul's dtype."""
        scale = self.weight_scale
        rows = _group_view(self.codes().to(scale.dtype), self.granularity, 0, self.group_size)
        zp = (self.weight_zero_point.to(scale.dtype) if not self.spec["symmetric"]
              else torch.zeros((), dtype=scale.dtype, device=scale.device))
        rows = (rows - zp.reshape(-1, 1)) * scale.reshape(-1, 1)
        like = torch.empty(self.weight_shape, device="meta")
        return _ungroup(rows, like, self.granularity, 0).to(ops.compute_dtype(scale))

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (computed on each access; nothing float is stored)."""
        return self.dequantized_weight()

    def extra_repr(self) -> str:
        return (f"shape={self.weight_shape}, bits={self.spec['bits']:g}, "
                f"container=int{self.container}, granularity={self.granularity}")


class PackedLinear(PackedWeight):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.dequantized_weight(), self.bias)


class PackedConv2d(PackedWeight):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        return F.conv2d(self.input_quantizer(x), self.dequantized_weight(), self.bias,
                        tuple(s["stride"]), s["padding"] if isinstance(s["padding"], str)
                        else tuple(s["padding"]), tuple(s["dilation"]), s["groups"])


PACKED_TYPES: dict[str, type[PackedWeight]] = {"linear": PackedLinear, "conv2d": PackedConv2d}
KIND_OF = {QuantLinear: "linear", QuantConv2d: "conv2d"}


def layer_spec(name: str, layer: Any) -> dict[str, Any]:
    """What a packed layer needs besides its tensors (JSON-able): shape, grid, container."""
    bits = layer.effective_bits
    if bits is None:
        raise ValueError(f"layer {name} has a float weight: nothing to convert "
                         "(allowed: a model at its deployed weight bits)")
    qmin, qmax = code_range(bits, layer.symmetric)
    spec = {"kind": KIND_OF[type(layer)], "shape": list(layer.weight.shape), "bits": bits,
            "qmin": qmin, "qmax": qmax, "container": packing.container_bits(qmin, qmax),
            "granularity": layer.granularity, "group_size": layer.group_size,
            "symmetric": layer.symmetric, "bias": layer.bias is not None}
    if spec["kind"] == "conv2d":
        if layer.padding_mode != "zeros":
            raise ValueError(f"layer {name}: padding_mode={layer.padding_mode!r} is not "
                             "converted (allowed: zeros)")
        spec.update(stride=list(layer.stride), dilation=list(layer.dilation),
                    groups=layer.groups, padding=layer.padding if isinstance(layer.padding, str)
                    else list(layer.padding))
    return spec


@torch.no_grad()
def pack_layer(name: str, layer: Any) -> PackedWeight:
    """The packed twin of a fake-quant layer; raises if it would not reproduce its weight."""
    spec = layer_spec(name, layer)
    w = layer.weight.detach().float()
    codes, qp = integer_codes(w, spec["bits"], granularity=layer.granularity, axis=0,
                              group_size=layer.group_size, symmetric=layer.symmetric)
    packed = PACKED_TYPES[spec["kind"]](spec, layer.input_quantizer)
    packed.fill(codes, qp.scale, qp.zero_point, layer.bias)
    packed.to(layer.weight.device)
    with torch.autocast(w.device.type, enabled=False):
        want = layer.quantized_weight().float()
    if not torch.equal(packed.dequantized_weight().float(), want):
        raise ValueError(f"layer {name}: packed codes do not reproduce the fake-quant weight")
    return packed


def convert_model(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Swap every fake-quant layer of ``model`` for its packed twin in place.

    Returns the layer specs by name (what :func:`empty_packed` rebuilds from). Shared input
    quantizers stay shared and keep their write-back hooks: the same objects move over.
    """
    specs = {}
    for name, layer in list(quant_layers(model)):
        packed = pack_layer(name, layer)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, packed)
        specs[name] = packed.spec
    return specs


def empty_packed(model: nn.Module, specs: dict[str, dict[str, Any]],
                 act: dict[str, Any]) -> None:
    """Put empty packed layers (to be filled by ``load_state_dict``) at ``specs``' names."""
    for name, spec in specs.items():
        quantizer = ActQuantizer(act["bits"], symmetric=act["symmetric"], learn=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                PACKED_TYPES[spec["kind"]](spec, quantizer))


def packed_layers(model: nn.Module) -> list[tuple[str, PackedWeight]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PackedWeight)]


def bits_per_weight(specs: dict[str, dict[str, Any]]) -> float:
    """Stored bits per quantized weight: packed codes + fp32 scales (+ int32 zero points)."""
    stored = weights = 0
    for s in specs.values():
        numel = math.prod(s["shape"])
        groups = ops.num_groups(tuple(s["shape"]), s["granularity"], s["group_size"])
        c = s["container"]
        stored += 8 * packing.packed_numel(numel, c) * packing.STORAGE[c].itemsize
        stored += 32 * groups * (1 if s["symmetric"] else 2)
        weights += numel
    return stored / max(weights, 1)
