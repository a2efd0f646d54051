"""One activation quantizer per tensor, seen by every reader: training with the device's semantics.

FraQAT fake-quantizes each quantized layer's *input* (``QuantLinear.input_quantizer``). HTP
and AIMET attach an activation encoding to a *tensor*: every op that reads the tensor reads
its INT8 value. The two disagree where

* several quantized layers read one tensor (attention's q/k/v projections): each layer has
  its own quantizer, so learned or separately calibrated scales could differ, while the
  device has one encoding;
* a quantized layer's input is also read by a float op (Sana: the residual stream enters
  ``attn2.to_q`` *and* the residual add after cross-attention): training quantizes only the
  layer's view, the device quantizes the add's input too (6.8 % relative L2 at the output of
  the embedded model before this transform).

:func:`share_tensor_quantizers` makes the PyTorch model run the device's semantics, without
touching the layer classes:

1. A probe forward (no grad) records, by tensor identity, which quantized layers read which
   tensor and which float ops read the same tensors, in execution order (a
   ``TorchFunctionMode`` outside the quantized layers; metadata reads such as ``.shape`` and
   no-op ``.to`` do not count).
2. Layers that read one tensor get one ``ActQuantizer`` object (``layer.input_quantizer`` of
   the later readers is the first reader's), so calibration, learned scales and the export
   see one set of qparams per tensor.
3. A quantizer whose tensor is also read in float gets a forward hook that writes the
   quantized value back into the tensor in place (``x.copy_(q(x))``, an autograd function
   that marks ``x`` dirty and passes the gradient to ``q(x)``, i.e. straight-through into
   the producer). Every later reader, float or not, then sees the quantized tensor: exactly
   the device's reading. Autograd's version counter refuses (loudly) a producer that saved
   its output for backward.

A float read *before* the tensor's first quantized reader cannot be matched this way (the
device quantizes at the producer), nor may a model input be overwritten (it is the caller's
tensor); such tensors are logged, reported by :attr:`TensorPlan.early` and left to the
export's gate (``reports/export.json`` → ``per_tensor_semantics``). In diffusers' Sana
(the tiny configs of the tests, the Sana-600M config) there are none.

The plan depends on the architecture only, so :func:`fraqat.train.runs.quantized_copy` applies it
to every quantized model (training, evaluation, export) from a random probe batch, and
:func:`plan_of` reads it back from a model for the run's record.
"""

from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from fraqat.quant.activations import quantizer_readers
from fraqat.quant.layers import quant_layers

log = logging.getLogger(__name__)
_META = {"size", "dim", "numel", "is_floating_point", "is_complex", "element_size",
         "__len__", "__get__", "data_ptr", "stride", "is_contiguous", "get_device"}


@dataclass
class TensorPlan:
    """Which quantized layers share a tensor, and which tensors float ops also read."""

    groups: list[list[str]] = field(default_factory=list)      # layers reading one tensor
    write_back: list[str] = field(default_factory=list)       # first reader of a float-read one
    early: list[str] = field(default_factory=list)  # read in float before it, or a model input

    def to_dict(self) -> dict:
        return asdict(self)


class _Probe(TorchFunctionMode):
    """Records float reads (by tensor identity, in order) outside the quantized layers."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0
        self.inside = 0
        self.serials = 0
        self.ids: dict[int, tuple[weakref.ref, int]] = {}  # id() -> (tensor, serial number)
        self.first_read: dict[int, int] = {}   # serial -> clock of its first/last float read
        self.last_read: dict[int, int] = {}
        self.layer_reads: dict[int, list[tuple[int, str]]] = defaultdict(list)

    def _key(self, t: torch.Tensor) -> int:
        """A serial number per tensor (``id()`` alone is reused once a tensor is freed)."""
        ref, serial = self.ids.get(id(t), (None, -1))
        if ref is None or ref() is not t:
            self.serials += 1
            serial = self.serials
            self.ids[id(t)] = (weakref.ref(t), serial)
        return serial

    def layer_read(self, x: torch.Tensor, layer: str) -> None:
        self.clock += 1
        self.layer_reads[self._key(x)].append((self.clock, layer))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if self.inside or name in _META:
            return out
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not outs or all(any(o is t for t in tensors) for o in outs):
            return out  # metadata or a no-op (e.g. .to(same dtype)): not a read
        self.clock += 1
        for t in tensors:
            key = self._key(t)
            self.first_read.setdefault(key, self.clock)
            self.last_read[key] = self.clock
        return out


@torch.no_grad()
def find_plan(model: nn.Module, inputs: dict) -> TensorPlan:
    """Run ``model(**inputs)`` once and derive the :class:`TensorPlan`."""
    probe = _Probe()
    given = [t for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor)]
    layers: dict[str, Any] = dict(quant_layers(model))  # QuantLinear / QuantConv2d
    handles = []
    for name, layer in layers.items():
        def enter(mod, args, name=name):
            probe.layer_read(args[0], name)
            probe.inside += 1

        def leave(mod, args, out):
            probe.inside -= 1
        handles += [layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave)]
    try:
        with probe:
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    plan = TensorPlan()
    caller = {probe._key(t) for t in given}
    for key, reads in probe.layer_reads.items():
        names = list(dict.fromkeys(layer for _, layer in reads))
        plan.groups.append(names)
        if key not in probe.last_read:
            continue  # only quantized layers read it
        if key in caller or probe.first_read[key] < reads[0][0]:
            plan.early.append(names[0])  # the caller's tensor, or read in float before
        if key not in caller and probe.last_read[key] > reads[0][0]:
            plan.write_back.append(names[0])
    if plan.early:
        log.warning("tensors read in float before their quantized reader (the device "
                    "quantizes them for every reader): inputs of %s", ", ".join(plan.early))
    return plan


class _WriteBack(torch.autograd.Function):
    """``x.copy_(xq)`` in place; the gradient of the new ``x`` flows to ``xq``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(x)
        return x.copy_(xq)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, grad


def _write_back_hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
    """The layer keeps ``out`` (its own tensor, safe to save for backward); ``x`` becomes it."""
    x = args[0]
    if out is not x and getattr(module, "write_back", False):
        _WriteBack.apply(x, out)  # (passthrough when observing, uncalibrated or float)


def apply_plan(model: nn.Module, plan: TensorPlan) -> nn.Module:
    """Tie the quantizers of each group and hook the write-backs (idempotent); returns ``model``.

    Works on fake-quant and converted (packed) layers alike: both read ``input_quantizer``.
    """
    layers: dict[str, Any] = dict(quantizer_readers(model))
    for names in plan.groups:
        first = layers[names[0]].input_quantizer
        for name in names[1:]:
            q = layers[name].input_quantizer
            if q is not first and (q.bits, q.symmetric, q.learn) == (
                    first.bits, first.symmetric, first.learn):
                layers[name].input_quantizer = first
    for name in plan.write_back:
        q = layers[name].input_quantizer
        if not getattr(q, "write_back", False):
            q.write_back = True
            q.register_forward_hook(_write_back_hook)
    return model


def share_tensor_quantizers(model: nn.Module, inputs: dict) -> TensorPlan:
    """Probe ``model(**inputs)`` and apply the plan: one quantizer per tensor, every reader."""
    plan = find_plan(model, inputs)
    apply_plan(model, plan)
    return plan


def plan_of(model: nn.Module) -> dict:
    """The sharing the model runs with: groups of layers with one quantizer, write-backs."""
    by_quantizer: dict[int, list[str]] = defaultdict(list)
    write_back = []
    for name, layer in quantizer_readers(model):
        q = layer.input_quantizer
        if not by_quantizer[id(q)] and getattr(q, "write_back", False):
            write_back.append(name)
        by_quantizer[id(q)].append(name)
    return {"groups": [g for g in by_quantizer.values() if len(g) > 1],
            "write_back": write_back}


@contextmanager
def layer_input_semantics(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily quantize only the layers' views (write-backs off): the old semantics."""
    hooked: list[Any] = [q for _, layer in quant_layers(model)
                         if getattr(q := layer.input_quantizer, "write_back", False)]
    for q in hooked:
        q.write_back = False
    try:
        yield model
    finally:
        for q in hooked:
            q.write_back = True
