"""A trained quantized model on disk: ``data/runs/<method>/s<seed>/``.

``model.safetensors`` holds the transformer's state dict (weights + activation quantizer
state), ``quant.json`` the :class:`~fraqat.quant.layers.QuantConfig` and the deployed weight bits,
``config.json`` the diffusers config of the transformer. The prompt encoder is the teacher's
(it is not quantized), so a run loads on top of the teacher; the transformer alone loads in
one call, :func:`load_quantized_transformer`, and swaps into its diffusers pipeline.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import save_file

from fraqat.checked import load_weights, require
from fraqat.errors import FraqatError
from fraqat.io import atomic_path, read_json, write_json
from fraqat.models.registry import TextToImage, dummy_inputs, load_teacher
from fraqat.quant.layers import QuantConfig, quantize_model, set_weight_bits
from fraqat.quant.tensor_quantizers import plan_of, share_tensor_quantizers


def quantized_copy(teacher: TextToImage, config: QuantConfig) -> TextToImage:
    """A deep copy of ``teacher`` with its transformer swapped to quantized layers.

    Activation quantizers follow the device's one-encoding-per-tensor semantics
    (:func:`fraqat.quant.tensor_quantizers.share_tensor_quantizers`, probed on a random batch).
    """
    transformer = quantize_model(copy.deepcopy(teacher.transformer), config)
    share_tensor_quantizers(transformer, dummy_inputs(transformer, batch=1,
                                                      generator=torch.Generator()))
    return dataclasses.replace(teacher, transformer=transformer)


def save_run(folder: str | Path, model: TextToImage, config: QuantConfig, meta: dict) -> None:
    with atomic_path(folder) as out:
        out.mkdir()
        # clone: a quantizer shared by several layers appears under each name
        state = {k: v.detach().clone().contiguous()
                 for k, v in model.transformer.state_dict().items()}
        save_file(state, str(out / "model.safetensors"))
        write_json(out / "quant.json", {"config": config.to_dict(),
                                        "tensor_quantizers": plan_of(model.transformer), **meta})
        cast(Any, model.transformer).save_config(out)  # config.json: the architecture


def load_run(folder: str | Path, teacher_dir: str | Path) -> TextToImage:
    """Rebuild a saved run: teacher architecture -> quantize -> trained state -> deployed bits."""
    folder = Path(folder)
    info = read_json(folder / "quant.json", ("config",))
    config = QuantConfig(**info["config"])
    model = quantized_copy(load_teacher(teacher_dir), config)
    load_weights(model.transformer, folder / "model.safetensors")
    set_weight_bits(model.transformer, config.weight_bits)
    return model.eval()


def load_quantized_transformer(folder: str | Path) -> torch.nn.Module:
    """The trained quantized transformer of a run folder, at its deployed bits, in one call.

    Built from the folder alone (``config.json`` -> diffusers class -> quantized layers ->
    trained state), so it drops into the family's pipeline::

        pipe = SanaPipeline.from_pretrained(model_path, transformer=load_quantized_transformer(
            "data/runs/fraqat/s0"))
    """
    import diffusers

    folder = Path(folder)
    for name in ("config.json", "quant.json", "model.safetensors"):
        require(folder / name, f"{name} of a run folder written by `fraqat train`, "
                "data/runs/<method>/s<seed>")
    arch = read_json(folder / "config.json", ("_class_name",))
    cls = getattr(diffusers, arch["_class_name"])
    info = read_json(folder / "quant.json", ("config",))
    config = QuantConfig(**info["config"])
    transformer = quantize_model(cls.from_config(arch), config)
    share_tensor_quantizers(transformer, dummy_inputs(transformer, batch=1,
                                                      generator=torch.Generator()))
    if info.get("tensor_quantizers") != plan_of(transformer):
        raise FraqatError(f"the run at {folder} was trained with other activation quantizers "
                          "than this fraqat builds (allowed: a run trained by this version)")
    load_weights(transformer, folder / "model.safetensors")
    set_weight_bits(transformer, config.weight_bits)
    return transformer.eval()
