"""Quantized drop-in layers and the in-place module swap (in the spirit of torchao's ``quantize_``).

``quantize_model(model, config)`` replaces every ``nn.Linear`` and ``nn.Conv2d`` (all the
matmuls of diffusers' DiT blocks: attention projections, GLUMBConv/FeedForward, patch
embedding, caption/timestep projections, final projection) by a subclass that fake-quantizes
its weight at ``weight_bits`` and its input at ``act_bits``. Parameters are shared, not copied,
so state-dict keys stay those of the original model plus each layer's ``input_quantizer.*``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fraqat.quant import ops
from fraqat.quant.activations import ActQuantizer
from fraqat.quant.core import GRANULARITIES, check_bits, grid_tensor

if TYPE_CHECKING:
    from fraqat.params import Params

KEEP_8BIT_DEFAULT = 8.0


@dataclass
class QuantConfig:
    """How to quantize a model. ``weight_bits=None``/``act_bits=None`` mean full precision.

    ``skip``: fnmatch patterns of module names left in full precision (not swapped).
    ``keep_8bit``: patterns of layers whose weights never go below 8 bits (e.g. the patch
    embedding and the final projection, which the paper's deployments often keep wider).
    """

    weight_bits: float | None = 4.0
    act_bits: float | None = 8.0
    granularity: str = "tensor"
    group_size: int = 64
    symmetric: bool = True
    act_symmetric: bool = False
    learn_act_scale: bool = False
    skip: list[str] = field(default_factory=list)
    keep_8bit: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.weight_bits is not None:
            self.weight_bits = check_bits(self.weight_bits, "weight_bits")
        if self.act_bits is not None:
            self.act_bits = check_bits(self.act_bits, "act_bits")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r} is not allowed "
                             f"(allowed: {', '.join(GRANULARITIES)})")
        gs = self.group_size
        if isinstance(gs, bool) or not isinstance(gs, int) or gs < 1:
            raise ValueError(f"group_size={gs!r} is not allowed (allowed: an integer >= 1)")

    @classmethod
    def from_params(cls, params: Params, weight_bits: float | None = None) -> QuantConfig:
        """The config that validated ``params`` describe (``weight_bits`` defaults to
        ``params.bits``): the bit-widths plus the ``quant:`` section, field for field (its
        schema, ``fraqat.params.QuantParams``, is where the section's keys are declared)."""
        return cls(weight_bits=params.bits if weight_bits is None else weight_bits,
                   act_bits=params.act_bits, **params.quant.model_dump())

    def to_dict(self) -> dict:
        return asdict(self)


class _QuantMixin:
    """Weight fake-quant + input activation quantizer shared by the layer types."""

    weight: torch.Tensor
    weight_grid: torch.Tensor  # a non-persistent buffer: (divisor, qmin, qmax) of the bits
    register_buffer: Callable[..., None]

    def _setup_quant(self, config: QuantConfig, keep_8bit: bool) -> None:
        self.min_bits: float | None = KEEP_8BIT_DEFAULT if keep_8bit else None
        self.granularity = config.granularity
        self.group_size = config.group_size
        self.symmetric = config.symmetric
        self.input_quantizer = ActQuantizer(config.act_bits, symmetric=config.act_symmetric,
                                            learn=config.learn_act_scale)
        # the bit-width as the ops read it (divisor, qmin, qmax): setting bits is a copy into
        # this buffer, so compiled graphs and captured CUDA graphs stay valid (not saved)
        self.register_buffer("weight_grid", grid_tensor(8.0, self.symmetric,
                                                        self.weight.device), persistent=False)
        self.weight_bits = config.weight_bits

    @property
    def weight_bits(self) -> float | None:
        return self._weight_bits

    @weight_bits.setter
    def weight_bits(self, bits: float | None) -> None:
        self._weight_bits = bits
        self._quantize_weight = bits is not None  # the only bits-dependent branch in forward
        eff = self.effective_bits
        if eff is not None and eff != getattr(self, "_grid_bits", None):
            self.weight_grid.copy_(grid_tensor(eff, self.symmetric))
            self._grid_bits = eff

    @property
    def effective_bits(self) -> float | None:
        """Bits actually applied: ``weight_bits`` floored at ``min_bits`` for kept layers."""
        if self.weight_bits is None or self.min_bits is None:
            return self.weight_bits
        return max(self.weight_bits, self.min_bits)

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight, in autocast's dtype when autocast is on (no fp32 copy)."""
        if not self._quantize_weight:
            return self.weight
        return ops.fake_quantize_grid(self.weight, self.weight_grid, granularity=self.granularity,
                                      group_size=self.group_size, symmetric=self.symmetric,
                                      out_dtype=ops.compute_dtype(self.weight))


class QuantLinear(_QuantMixin, nn.Linear):
    @classmethod
    def from_float(cls, mod: nn.Linear, config: QuantConfig, keep_8bit: bool = False):
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = mod.in_features, mod.out_features
        new.weight, new.bias = mod.weight, mod.bias
        new._setup_quant(config, keep_8bit)
        new.train(mod.training)  # keep eval/train mode
        return new.to(mod.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.quantized_weight(), self.bias)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    @classmethod
    def from_float(cls, mod: nn.Conv2d, config: QuantConfig, keep_8bit: bool = False):
        new = cls.__new__(cls)
        new.__dict__.update(mod.__dict__)  # conv hyper-parameters and the shared parameters
        new._parameters = dict(mod._parameters)
        new._buffers = dict(mod._buffers)
        new._modules = dict(mod._modules)
        new._setup_quant(config, keep_8bit)
        new.train(mod.training)  # keep eval/train mode
        return new.to(mod.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.quantized_weight(), self.bias)


QUANT_TYPES: dict[type[nn.Module], type[QuantLinear] | type[QuantConv2d]] = {nn.Linear: QuantLinear,
                                                       nn.Conv2d: QuantConv2d}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def quantize_model(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Swap Linear/Conv2d layers for quantized ones in place; returns ``model``."""
    targets = [(name, mod) for name, mod in model.named_modules()
               if type(mod) in QUANT_TYPES and not _matches(name, config.skip)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = QUANT_TYPES[type(mod)].from_float(mod, config, _matches(name, config.keep_8bit))
        setattr(parent, child, new)
    return model


def quant_layers(model: nn.Module) -> Iterator[tuple[str, _QuantMixin]]:
    for name, mod in model.named_modules():
        if isinstance(mod, _QuantMixin):
            yield name, mod


def forward_signature(layers: Iterable[_QuantMixin]) -> tuple[bool, ...]:
    """The host-side state that decides which kernels the layers launch (not their values,
    which live in tensors): a captured CUDA graph is valid while this stays the same."""
    sig = []
    for layer in layers:
        q = layer.input_quantizer
        sig += [layer._quantize_weight, q.bits is not None and q._ready and not q.observing]
    return tuple(sig)


def set_weight_bits(model: nn.Module, bits: float | None) -> None:
    """Set every quantized layer's weight bit-width (``None``: full-precision weights)."""
    if bits is not None:
        bits = check_bits(bits, "weight_bits")
    for _, layer in quant_layers(model):
        layer.weight_bits = bits


@contextmanager
def weight_bits(model: nn.Module, bits: float | None):
    """Temporarily evaluate ``model`` at another weight bit-width."""
    old = {name: layer.weight_bits for name, layer in quant_layers(model)}
    set_weight_bits(model, bits)
    try:
        yield model
    finally:
        for name, layer in quant_layers(model):
            layer.weight_bits = old[name]


@torch.no_grad()
def calibrate_activations(model: nn.Module, batches: Iterable, forward) -> int:
    """Observe activation ranges over ``batches`` (``forward(model, batch)`` runs one), freeze.

    Returns the number of batches seen. Weights are quantized at their current bits during
    calibration, so the observed ranges are those the deployed model sees.
    """
    quantizers = [layer.input_quantizer for _, layer in quant_layers(model)]
    for q in quantizers:
        q.observe()
    n = 0
    for batch in batches:
        forward(model, batch)
        n += 1
    for q in quantizers:
        q.freeze()
    return n


def layer_report(model: nn.Module) -> list[dict]:
    """One row per quantized layer: name, type, weight shape, weight and activation bits."""
    return [{"name": name, "type": type(layer).__name__, "shape": list(layer.weight.shape),
             "weight_bits": layer.effective_bits, "act_bits": layer.input_quantizer.bits}
            for name, layer in quant_layers(model)]
