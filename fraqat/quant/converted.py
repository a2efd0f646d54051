"""A converted W4A8 transformer on disk, and its one-call loader :func:`load_converted`.

A folder of three files, the diffusers way (``config.json`` + weights + a quantization
config)::

    config.json                 the diffusers config of the transformer (its class, sizes)
    quantization_config.json    per layer: shape, bits, code range, container, granularity;
                                the activation bits; which layers share one INT8 quantizer
    model.safetensors           packed weight codes (uint8, two 4-bit codes per byte), fp32
                                scales (+ zero points), INT8 activation scales / zero points,
                                and the unquantized parameters (norms, biases, tables)

Loading builds the diffusers class on the meta device (no float weights are ever made),
swaps in empty :class:`~fraqat.quant.packed.PackedLinear` / ``PackedConv2d`` layers, ties the
shared activation quantizers, and assigns the stored tensors::

    transformer = fraqat.load_converted("data/converted")   # a SanaTransformer2DModel
    pipe = SanaPipeline.from_pretrained(model_path, transformer=transformer)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fraqat import checked
from fraqat.checked import bad_file, reading, require, require_keys
from fraqat.errors import FraqatError
from fraqat.io import atomic_path, write_json
from fraqat.quant.packed import empty_packed, packed_layers
from fraqat.quant.tensor_quantizers import TensorPlan, apply_plan, plan_of

FORMAT = "fraqat-packed-v1"
CONFIG, QUANT_CONFIG, WEIGHTS = "config.json", "quantization_config.json", "model.safetensors"


def save_converted(folder: str | Path, transformer: nn.Module, specs: dict[str, dict],
                   meta: dict[str, Any]) -> None:
    """Write a converted transformer (see the module docstring) as one atomic folder."""
    act = next((m.input_quantizer for _, m in packed_layers(transformer)), None)
    with atomic_path(folder) as out:
        out.mkdir()
        # clone: a quantizer shared by several layers appears under each name
        state = {k: v.detach().clone().contiguous() for k, v in transformer.state_dict().items()}
        save_file(state, str(out / WEIGHTS))
        os.chmod(out / WEIGHTS, 0o644)
        write_json(out / QUANT_CONFIG, {
            "format": FORMAT, "layers": specs, "tensor_quantizers": plan_of(transformer),
            "act_bits": None if act is None else act.bits,
            "act_symmetric": None if act is None else act.symmetric, **meta})
        cast(Any, transformer).save_config(out)


def _check_folder(folder: Path) -> dict:
    for name in (CONFIG, QUANT_CONFIG, WEIGHTS):
        require(folder / name, f"{name} of a converted model written by `fraqat convert`")
    info = checked.read_json(folder / QUANT_CONFIG, ("format",))
    if info["format"] != FORMAT:
        raise bad_file(folder / QUANT_CONFIG, f"format {info['format']!r} is not read by this "
                       f"fraqat (allowed: {FORMAT})")
    require_keys(folder / QUANT_CONFIG, info, ("layers", "tensor_quantizers", "act_bits",
                                                 "act_symmetric"), f"a {FORMAT} config")
    return info


def _architecture(cls: Any, arch: dict) -> nn.Module:
    """The diffusers model without weights (meta), unless it has buffers no file restores."""
    with torch.device("meta"):
        model = cls.from_config(arch)
    saved = set(model.state_dict())
    if any(name not in saved for name, _ in model.named_buffers()):
        model = cls.from_config(arch)  # computed buffers (position tables): build for real
    return model


def load_converted(folder: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """The converted transformer of ``folder`` in one call: a diffusers model in eval mode
    whose quantized layers hold packed integer codes and dequantize on the fly."""
    import diffusers

    folder = Path(folder)
    info = _check_folder(folder)
    arch = checked.read_json(folder / CONFIG, ("_class_name",))
    transformer = _architecture(getattr(diffusers, arch["_class_name"]), arch)
    empty_packed(transformer, info["layers"],
                 {"bits": info["act_bits"], "symmetric": info["act_symmetric"]})
    plan = info["tensor_quantizers"]
    apply_plan(transformer, TensorPlan(groups=plan["groups"], write_back=plan["write_back"]))
    with reading(folder / WEIGHTS, f"weights file of this converted {arch['_class_name']}"):
        state = load_file(str(folder / WEIGHTS), device=str(device or "cpu"))
        transformer.load_state_dict(state, assign=True)
    meta = [n for n, t in [*transformer.named_parameters(), *transformer.named_buffers()]
            if t.is_meta]
    if meta:
        raise FraqatError(f"{folder / WEIGHTS} lacks {', '.join(meta[:3])} "
                          "(allowed: a folder written by this fraqat's `fraqat convert`)")
    return transformer.to(device or "cpu").eval()


def stored_bytes(folder: str | Path) -> int:
    """Bytes of every file in ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
