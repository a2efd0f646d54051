"""Model registry and the text-to-image wrapper the stages share.

``TextToImage`` pairs a diffusers transformer with a prompt encoder and predicts the
flow-matching velocity ``v = noise - x0`` at ``x_t = (1 - t) x0 + t noise``, t in [0, 1]
(diffusers' ``FlowMatchEulerDiscreteScheduler`` convention, timestep = 1000 t).

The embedded default ``tiny-sana`` is a small ``SanaTransformer2DModel`` trained in-project
(``fraqat pretrain``); the real models load through diffusers ``from_pretrained`` from
``model_path`` (a local folder or hub id), offline unless ``allow_download`` is set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fraqat.checked import (
    check_component,
    from_pretrained,
    open_tensors,
    read_json,
    require,
    require_keys,
)
from fraqat.data import prompt_for
from fraqat.errors import FraqatError
from fraqat.models.families import Family, family_of_transformer, predict
from fraqat.models.text_encoder import PromptEncoder


@dataclass(frozen=True)
class ModelSpec:
    cls_name: str
    hub_id: str | None


REGISTRY: dict[str, ModelSpec] = {
    "tiny-sana": ModelSpec("SanaTransformer2DModel", None),
    "sana-600m": ModelSpec("SanaTransformer2DModel",
                           "Efficient-Large-Model/Sana_600M_1024px_diffusers"),
    "sana-1.6b": ModelSpec("SanaTransformer2DModel",
                           "Efficient-Large-Model/Sana_1600M_1024px_diffusers"),
    "pixart-sigma": ModelSpec("PixArtTransformer2DModel", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"),
    "sd3.5-medium": ModelSpec("SD3Transformer2DModel", "stabilityai/stable-diffusion-3.5-medium"),
    "flux-schnell": ModelSpec("FluxTransformer2DModel", "black-forest-labs/FLUX.1-schnell"),
}


def transformer_class(name: str) -> Any:
    """The registry entry's diffusers class (a ``ModelMixin``: ``from_pretrained``, ``config``)."""
    import diffusers

    if name not in REGISTRY:
        raise FraqatError(f"model {name!r} is not known (allowed: {', '.join(REGISTRY)})")
    return getattr(diffusers, REGISTRY[name].cls_name)


def load_transformer(name: str, model_path: str | None = None,
                     allow_download: bool = False) -> nn.Module:
    """``from_pretrained`` of the model's transformer from a local folder or hub id.

    Accepts a pipeline folder (with ``transformer/``) or a transformer folder itself.
    Missing weights raise one line: which model, where it looked, what to set.
    """
    cls = transformer_class(name)
    where = model_path or REGISTRY[name].hub_id
    if where is None:
        raise FraqatError(f"model {name!r} has no hub id: set model_path in params.yaml")
    local = Path(where)
    subfolder: str | None = "transformer"
    if local.is_dir() and (local / "config.json").exists():
        subfolder = None
    offline = "" if allow_download else " (offline: nothing is downloaded)"
    todo = (f"set model_path in params.yaml to a local copy of "
            f"{REGISTRY[name].hub_id or 'the model'} for model {name!r}{offline}")
    if local.is_dir():
        check_component(local / (subfolder or ""), todo, listed_in=str(local))
    return from_pretrained(cls, where, todo, subfolder=subfolder,
                           local_files_only=not allow_download)


def tiny_sana_config(width: int = 64, layers: int = 2, heads: int = 2,
                     patch_size: int = 2, image_size: int = 8) -> dict:
    """A SanaTransformer2DModel config for square single-channel images (pixel space).

    ``patch_size=2`` gives 16 tokens per 8x8 digit: 4x less compute than 64, what lets the
    whole default pipeline run on 2 CPU cores; 28x28 mnist with ``patch_size=4``: 49 tokens.
    """
    if width % heads:
        raise FraqatError(f"pretrain.width={width} must be divisible by pretrain.heads={heads}")
    if image_size % patch_size:
        raise FraqatError(f"pretrain.patch_size={patch_size} must divide the {image_size}x"
                          f"{image_size} images (allowed: a divisor of {image_size})")
    head_dim = width // heads
    return dict(in_channels=1, out_channels=1, sample_size=image_size, patch_size=patch_size,
                num_attention_heads=heads, attention_head_dim=head_dim, num_layers=layers,
                cross_attention_dim=width, num_cross_attention_heads=heads,
                cross_attention_head_dim=head_dim, caption_channels=width, mlp_ratio=2.5,
                norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=False)


def dummy_inputs(transformer: nn.Module, batch: int = 2, seq: int = 4,
                 generator: torch.Generator | None = None) -> dict:
    """Random forward kwargs for any registry transformer class (for tests and benchmarks)."""
    cfg: Any = transformer.config
    name = type(transformer).__name__
    g: dict[str, Any] = dict(generator=generator)
    if name == "FluxTransformer2DModel":
        tokens = 16
        return dict(hidden_states=torch.randn(batch, tokens, cfg.in_channels, **g),
                    encoder_hidden_states=torch.randn(batch, seq, cfg.joint_attention_dim, **g),
                    pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, **g),
                    timestep=torch.rand(batch, **g), img_ids=torch.zeros(tokens, 3),
                    txt_ids=torch.zeros(seq, 3),
                    guidance=torch.full((batch,), 3.5) if cfg.guidance_embeds else None)
    size = cfg.sample_size
    x = torch.randn(batch, cfg.in_channels, size, size, **g)
    t = torch.rand(batch, **g) * 1000
    if name == "SD3Transformer2DModel":
        return dict(hidden_states=x, timestep=t,
                    encoder_hidden_states=torch.randn(batch, seq, cfg.joint_attention_dim, **g),
                    pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, **g))
    kwargs: dict[str, Any] = dict(
        hidden_states=x, timestep=t,
        encoder_hidden_states=torch.randn(batch, seq, cfg.caption_channels, **g))
    if name == "PixArtTransformer2DModel":
        kwargs["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
    return kwargs


@dataclass
class TextToImage:
    """A transformer + its prompt conditioning, predicting in the family's convention.

    ``encoder`` encodes prompts (the embedded default's learned encoder); a real pipeline's
    text encoders run once in ``calibrate``, so its model carries ``prompt_table``, the
    encoded calibration prompts in the family's ``cond_keys`` order, instead.
    """

    transformer: Any  # a diffusers ModelMixin (config, save_pretrained), maybe quantized
    encoder: PromptEncoder | None
    sample_shape: tuple[int, int, int]
    prompt_table: tuple[torch.Tensor, ...] | None = None

    @property
    def family(self) -> Family:
        return family_of_transformer(self.transformer)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder is None:
            raise FraqatError("this model has no prompt encoder: its prompts are encoded by "
                              "the pipeline in `calibrate` (use prompt_table)")
        return self.encoder.encode(prompts)

    def prompt_conditioning(self, prompts: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """Per-prompt conditioning rows that training indexes by prompt label."""
        return self.prompt_table if self.prompt_table is not None else self.encode(prompts)

    def predict(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        """Velocity (or noise, for PixArt) at noisy latents ``x`` and time ``t`` (B,) in [0, 1]."""
        return predict(self.family, self.transformer, x, t, cond)

    def parameters(self):
        yield from self.transformer.parameters()
        if self.encoder is not None:
            yield from self.encoder.parameters()

    def train(self, mode: bool = True) -> TextToImage:
        self.transformer.train(mode)
        if self.encoder is not None:
            self.encoder.train(mode)
        return self

    def eval(self) -> TextToImage:
        return self.train(False)

    def to(self, device: torch.device | str) -> TextToImage:
        self.transformer.to(device)
        if self.encoder is not None:
            self.encoder.to(device)
        if self.prompt_table is not None:
            self.prompt_table = tuple(c.to(device) for c in self.prompt_table)
        return self

    def save_pretrained(self, folder: str | Path, meta: dict | None = None) -> None:
        folder = Path(folder)
        self.transformer.save_pretrained(folder / "transformer")
        if self.encoder is not None:
            self.encoder.save_pretrained(folder / "prompt_encoder")
        info = {"sample_shape": list(self.sample_shape), **(meta or {})}
        (folder / "fraqat.json").write_text(json.dumps(info, indent=2, sort_keys=True))


def build_tiny_sana(width: int, layers: int, heads: int, prompts: Sequence[str],
                    patch_size: int = 2, image_size: int = 8) -> TextToImage:
    from diffusers import SanaTransformer2DModel

    transformer = SanaTransformer2DModel(**tiny_sana_config(width, layers, heads, patch_size,
                                                            image_size))
    encoder = PromptEncoder.from_prompts(prompts, dim=width)
    return TextToImage(transformer, encoder, (1, image_size, image_size))


def load_teacher(folder: str | Path) -> TextToImage:
    """Load the FP teacher written by ``fraqat pretrain`` (``data/teacher``).

    For a real model that folder only points at the pipeline (``model_path``): its transformer
    loads from there and its prompt conditioning from the calibration set, where ``calibrate``
    encoded the prompts once with the pipeline's text encoders.
    """
    from diffusers import SanaTransformer2DModel

    folder = Path(folder)
    info = read_json(folder / "fraqat.json")
    if "model_path" in info:
        return load_pipeline_teacher(info["model"], info["model_path"])
    require_keys(folder / "fraqat.json", info, ("sample_shape",))
    check_component(folder / "transformer", None, listed_in=str(folder / "fraqat.json"))
    transformer = from_pretrained(SanaTransformer2DModel, folder / "transformer")
    encoder = PromptEncoder.from_pretrained(folder / "prompt_encoder")
    model = TextToImage(transformer, encoder, tuple(info["sample_shape"]))
    return model.eval()


def write_pipeline_pointer(folder: str | Path, model: str, model_path: str) -> None:
    """``data/teacher`` of a real model: which pipeline folder holds the FP teacher (the
    folder itself was checked by :func:`fraqat.models.folder.check_inputs`)."""
    from fraqat.io import atomic_path, write_json

    with atomic_path(folder) as out:
        out.mkdir()
        write_json(out / "fraqat.json", {"model": model,
                                         "model_path": str(Path(model_path).resolve())})


def load_pipeline_teacher(model: str, model_path: str,
                          calibration: str | Path | None = None) -> TextToImage:
    """A real pipeline's FP transformer with the encoded calibration prompts (no encoders)."""
    from fraqat import paths

    calibration = require(calibration or paths.CALIBRATION,
                          "the calibration set (it holds the encoded prompts)")
    transformer = load_transformer(model, model_path)
    keys = family_of_transformer(transformer).cond_keys
    with open_tensors(calibration) as f:
        table = tuple(f.get_tensor(f"cond.{k}") for k in keys)
        shape = tuple(f.get_slice("x_t").get_shape()[1:])
    return TextToImage(transformer, None, shape, prompt_table=table).eval()


@torch.no_grad()
def predict_all(model: TextToImage, calib: dict[str, torch.Tensor],
                batch_size: int = 512) -> torch.Tensor:
    """The model's velocity on every calibration point (x_t, t, prompt label), batched; a real
    pipeline's labels index its prompt table."""
    out = []
    for i in range(0, len(calib["t"]), batch_size):
        sl = slice(i, i + batch_size)
        labels = calib["labels"][sl]
        cond = tuple(c[labels] for c in model.prompt_table) if model.prompt_table is not None \
            else model.encode([prompt_for(y) for y in labels])
        out.append(model.predict(calib["x_t"][sl], calib["t"][sl], *cond))
    return torch.cat(out)
