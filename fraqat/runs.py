"""A trained quantized model on disk: ``data/runs/<method>-s<seed>/``.

``model.safetensors`` holds the transformer's state dict (weights + activation quantizer
state), ``quant.json`` the :class:`~fraqat.modules.QuantConfig` and the deployed weight bits.
The prompt encoder is the teacher's (it is not quantized), so a run loads on top of the teacher.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fraqat.errors import FraqatError
from fraqat.io import atomic_path, read_json, write_json
from fraqat.models import TextToImage, dummy_inputs, load_teacher
from fraqat.modules import QuantConfig, quantize_model, set_weight_bits
from fraqat.tensor_quantizers import plan_of, share_tensor_quantizers


def quantized_copy(teacher: TextToImage, config: QuantConfig) -> TextToImage:
    """A deep copy of ``teacher`` with its transformer swapped to quantized layers.

    Activation quantizers follow the device's one-encoding-per-tensor semantics
    (:func:`fraqat.tensor_quantizers.share_tensor_quantizers`, probed on a random batch).
    """
    transformer = quantize_model(copy.deepcopy(teacher.transformer), config)
    share_tensor_quantizers(transformer, dummy_inputs(transformer, batch=1,
                                                      generator=torch.Generator()))
    return TextToImage(transformer, teacher.encoder, teacher.sample_shape)


def save_run(folder: str | Path, model: TextToImage, config: QuantConfig, meta: dict) -> None:
    with atomic_path(folder) as out:
        out.mkdir()
        # clone: a quantizer shared by several layers appears under each name
        state = {k: v.detach().clone().contiguous()
                 for k, v in model.transformer.state_dict().items()}
        save_file(state, str(out / "model.safetensors"))
        write_json(out / "quant.json", {"config": config.to_dict(),
                                        "tensor_quantizers": plan_of(model.transformer), **meta})


def load_run(folder: str | Path, teacher_dir: str | Path) -> TextToImage:
    """Rebuild a saved run: teacher architecture -> quantize -> trained state -> deployed bits."""
    folder = Path(folder)
    if not (folder / "quant.json").exists():
        raise FraqatError(f"no trained run at {folder} (run its `train` stage first)")
    info = read_json(folder / "quant.json")
    config = QuantConfig(**info["config"])
    model = quantized_copy(load_teacher(teacher_dir), config)
    model.transformer.load_state_dict(load_file(str(folder / "model.safetensors")))
    set_weight_bits(model.transformer, config.weight_bits)
    return model.eval()
