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

import torch
from torch import nn

from fraqat.data import prompt_for
from fraqat.errors import FraqatError
from fraqat.text_encoder import PromptEncoder


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


def transformer_class(name: str) -> type[nn.Module]:
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
    subfolder = "transformer"
    if local.is_dir() and (local / "config.json").exists():
        subfolder = None
    try:
        return cls.from_pretrained(where, subfolder=subfolder, local_files_only=not allow_download)
    except (OSError, ValueError) as exc:
        looked = str(local / "transformer") if subfolder and local.is_dir() else where
        hint = "" if allow_download else " (offline: local_files_only=True)"
        raise FraqatError(
            f"model {name!r}: no {cls.__name__} weights found at {looked!r}{hint}; set model_path "
            f"in params.yaml to a local copy of {REGISTRY[name].hub_id or 'the model'} "
            f"(a diffusers folder with transformer/config.json) [{exc.__class__.__name__}]"
        ) from None


def tiny_sana_config(width: int = 64, layers: int = 2, heads: int = 2,
                     patch_size: int = 2) -> dict:
    """A SanaTransformer2DModel config for 8x8 single-channel images (pixel space).

    ``patch_size=2`` gives 16 tokens per image: 4x less compute than 64, what lets the
    whole default pipeline run on 2 CPU cores.
    """
    if width % heads:
        raise FraqatError(f"pretrain.width={width} must be divisible by pretrain.heads={heads}")
    head_dim = width // heads
    return dict(in_channels=1, out_channels=1, sample_size=8, patch_size=patch_size,
                num_attention_heads=heads, attention_head_dim=head_dim, num_layers=layers,
                cross_attention_dim=width, num_cross_attention_heads=heads,
                cross_attention_head_dim=head_dim, caption_channels=width, mlp_ratio=2.5,
                norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=False)


def dummy_inputs(transformer: nn.Module, batch: int = 2, seq: int = 4,
                 generator: torch.Generator | None = None) -> dict:
    """Random forward kwargs for any registry transformer class (for tests and benchmarks)."""
    cfg, name = transformer.config, type(transformer).__name__
    g = dict(generator=generator)
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
    kwargs = dict(hidden_states=x, timestep=t,
                  encoder_hidden_states=torch.randn(batch, seq, cfg.caption_channels, **g))
    if name == "PixArtTransformer2DModel":
        kwargs["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
    return kwargs


@dataclass
class TextToImage:
    """A transformer + prompt encoder predicting flow-matching velocities."""

    transformer: nn.Module
    encoder: PromptEncoder
    sample_shape: tuple[int, int, int]

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.encode(prompts)

    def predict(self, x: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Velocity at noisy sample ``x`` and time ``t`` (B,) in [0, 1]."""
        kwargs = dict(hidden_states=x, encoder_hidden_states=hidden, timestep=t * 1000.0,
                      encoder_attention_mask=mask)
        if type(self.transformer).__name__ == "PixArtTransformer2DModel":
            kwargs["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
        return self.transformer(**kwargs).sample

    def parameters(self):
        yield from self.transformer.parameters()
        yield from self.encoder.parameters()

    def train(self, mode: bool = True) -> TextToImage:
        self.transformer.train(mode)
        self.encoder.train(mode)
        return self

    def eval(self) -> TextToImage:
        return self.train(False)

    def to(self, device: torch.device | str) -> TextToImage:
        self.transformer.to(device)
        self.encoder.to(device)
        return self

    def save_pretrained(self, folder: str | Path, meta: dict | None = None) -> None:
        folder = Path(folder)
        self.transformer.save_pretrained(folder / "transformer")
        self.encoder.save_pretrained(folder / "prompt_encoder")
        info = {"sample_shape": list(self.sample_shape), **(meta or {})}
        (folder / "fraqat.json").write_text(json.dumps(info, indent=2, sort_keys=True))


def build_tiny_sana(width: int, layers: int, heads: int, prompts: Sequence[str],
                    patch_size: int = 2) -> TextToImage:
    from diffusers import SanaTransformer2DModel

    transformer = SanaTransformer2DModel(**tiny_sana_config(width, layers, heads, patch_size))
    encoder = PromptEncoder.from_prompts(prompts, dim=width)
    return TextToImage(transformer, encoder, (1, 8, 8))


def load_teacher(folder: str | Path) -> TextToImage:
    """Load the FP teacher written by ``fraqat pretrain`` (``data/teacher``)."""
    from diffusers import SanaTransformer2DModel

    folder = Path(folder)
    if not (folder / "fraqat.json").exists():
        raise FraqatError(f"no teacher at {folder} (run `dvc repro pretrain` first)")
    info = json.loads((folder / "fraqat.json").read_text())
    transformer = SanaTransformer2DModel.from_pretrained(folder / "transformer")
    encoder = PromptEncoder.from_pretrained(folder / "prompt_encoder")
    model = TextToImage(transformer, encoder, tuple(info["sample_shape"]))
    return model.eval()


@torch.no_grad()
def predict_all(model: TextToImage, calib: dict[str, torch.Tensor],
                batch_size: int = 512) -> torch.Tensor:
    """The model's velocity on every calibration point (x_t, t, prompt label), batched."""
    out = []
    for i in range(0, len(calib["t"]), batch_size):
        sl = slice(i, i + batch_size)
        hidden, mask = model.encode([prompt_for(y) for y in calib["labels"][sl]])
        out.append(model.predict(calib["x_t"][sl], calib["t"][sl], hidden, mask))
    return torch.cat(out)
