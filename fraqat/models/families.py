"""How each diffusers family calls its transformer, encodes prompts and lays out latents.

One place for what differs between the four families the paper quantizes; everything else
(trainer, quantizer, metrics) sees one convention: latents ``x`` (B, C, h, w), time ``t`` (B,)
in [0, 1] (the scheduler's timestep / 1000) and a tuple of per-prompt conditioning tensors in
the family's ``cond_keys`` order.

What each family's transformer takes besides ``hidden_states`` and ``encoder_hidden_states``:

* sana:   ``encoder_attention_mask``; timestep = 1000 t * ``config.timestep_scale``.
* pixart: ``encoder_attention_mask``, ``added_cond_kwargs`` (no micro-conditions in Σ);
  timestep = 1000 t; the learned-sigma half of the output is dropped, as its pipeline does.
* sd3:    ``pooled_projections``; timestep = 1000 t.
* flux:   ``pooled_projections``, 2x2-packed latents, ``txt_ids`` (zeros), ``img_ids``
  (0, row, col), ``guidance`` where the config has ``guidance_embeds``; timestep = t.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fraqat.errors import FraqatError


@dataclass(frozen=True)
class Family:
    name: str
    transformer_cls: str
    pipeline_cls: str
    cond_keys: tuple[str, ...]


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sana", "SanaTransformer2DModel", "SanaPipeline",
           ("prompt_embeds", "prompt_attention_mask")),
    Family("pixart", "PixArtTransformer2DModel", "PixArtSigmaPipeline",
           ("prompt_embeds", "prompt_attention_mask")),
    Family("sd3", "SD3Transformer2DModel", "StableDiffusion3Pipeline",
           ("prompt_embeds", "pooled_prompt_embeds")),
    Family("flux", "FluxTransformer2DModel", "FluxPipeline",
           ("prompt_embeds", "pooled_prompt_embeds", "guidance")),
)}


def unwrap(transformer: nn.Module) -> nn.Module:
    """The diffusers model inside a DDP wrapper (FSDP2 keeps the model, as a subclass)."""
    return transformer.module if isinstance(transformer, DistributedDataParallel) else transformer


def family_of_transformer(transformer: nn.Module) -> Family:
    """The family of a transformer, also when wrapped (DDP, or FSDP2's ``fully_shard``, which
    swaps the class for a subclass: the family is found along the MRO)."""
    transformer = unwrap(transformer)
    for cls in type(transformer).__mro__:
        for family in FAMILIES.values():
            if family.transformer_cls == cls.__name__:
                return family
    name = type(transformer).__name__
    raise FraqatError(f"transformer class {name} is not a known family (allowed: "
                      f"{', '.join(f.transformer_cls for f in FAMILIES.values())})")


def family_of_class(cls_name: str) -> Family:
    """The family of a transformer or pipeline class name (``model_index.json``)."""
    for family in FAMILIES.values():
        if cls_name in (family.transformer_cls, family.pipeline_cls):
            return family
    raise FraqatError(f"class {cls_name} is not a known family (allowed: "
                      f"{', '.join(f.pipeline_cls for f in FAMILIES.values())})")


def config(transformer: nn.Module) -> Any:
    """A diffusers model's frozen config (typed loosely: its keys differ per class)."""
    return cast(Any, unwrap(transformer)).config


# --- latents ---------------------------------------------------------------------------------

def pack(x: torch.Tensor) -> torch.Tensor:
    """FLUX's 2x2 patch packing: (B, C, h, w) -> (B, h/2 * w/2, 4C)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack`: (B, h/2 * w/2, 4C) -> (B, C, h, w)."""
    b, _, c4 = x.shape
    x = x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """FLUX's (h/2 * w/2, 3) position ids: (0, row, col) of each packed token."""
    ids = torch.zeros(h // 2, w // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(h // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(w // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


def vae_scale(pipe) -> int:
    """Pixels per latent cell: the pipeline's own ``vae_scale_factor``."""
    return int(pipe.vae_scale_factor)


def latent_shape(pipe, family: Family, resolution: int) -> tuple[int, int, int]:
    """(C, h, w) of the unpacked latents the pipeline draws at ``resolution`` px."""
    cfg, s = pipe.transformer.config, vae_scale(pipe)
    if family.name == "flux":
        side = 2 * (resolution // (s * 2))
        return cfg.in_channels // 4, side, side
    return cfg.in_channels, resolution // s, resolution // s


def to_unpacked(family: Family, hidden_states: torch.Tensor, shape: tuple[int, int, int]
                ) -> torch.Tensor:
    """A transformer's ``hidden_states`` input in the (B, C, h, w) layout."""
    return unpack(hidden_states, shape[1], shape[2]) if family.name == "flux" else hidden_states


def t_of_timestep(family: Family, transformer: nn.Module, timestep: torch.Tensor
                  ) -> torch.Tensor:
    """The pipeline's ``timestep`` argument of the transformer, as t in [0, 1]."""
    timestep, cfg = timestep.float(), config(transformer)
    if family.name == "flux":
        return timestep
    if family.name == "sana":
        return timestep / (1000.0 * float(cfg.timestep_scale))
    return timestep / 1000.0


# --- the transformer call --------------------------------------------------------------------

def call_kwargs(family: Family, transformer: nn.Module, x: torch.Tensor, t: torch.Tensor,
                cond: Sequence[torch.Tensor]) -> dict:
    """The family's forward kwargs for latents ``x`` (B, C, h, w), t (B,) in [0, 1]."""
    cfg = config(transformer)
    if family.name == "flux":
        embeds, pooled, guidance = cond
        h, w = x.shape[-2:]
        return dict(hidden_states=pack(x), encoder_hidden_states=embeds,
                    pooled_projections=pooled, timestep=t,
                    img_ids=image_ids(h, w, x.device, x.dtype),
                    txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=x.dtype),
                    guidance=guidance.float() if cfg.guidance_embeds else None,
                    return_dict=True)
    if family.name == "sd3":
        embeds, pooled = cond
        return dict(hidden_states=x, encoder_hidden_states=embeds, pooled_projections=pooled,
                    timestep=t * 1000.0)
    embeds, mask = cond
    if family.name == "sana":
        return dict(hidden_states=x, encoder_hidden_states=embeds,
                    timestep=t * 1000.0 * cfg.timestep_scale, encoder_attention_mask=mask)
    return dict(hidden_states=x, encoder_hidden_states=embeds, timestep=t * 1000.0,
                encoder_attention_mask=mask,
                added_cond_kwargs={"resolution": None, "aspect_ratio": None})


def predict(family: Family, transformer: nn.Module, x: torch.Tensor, t: torch.Tensor,
            cond: Sequence[torch.Tensor]) -> torch.Tensor:
    """The transformer's prediction in the latents' (B, C, h, w) layout.

    For PixArt's learned-sigma output (2C channels) only the first C (the noise) are kept,
    as its pipeline does.
    """
    out = transformer(**call_kwargs(family, transformer, x, t, cond)).sample
    if family.name == "flux":
        return unpack(out, *x.shape[-2:])
    if out.shape[1] == 2 * x.shape[1]:
        return out[:, : x.shape[1]]
    return out


# --- prompts ---------------------------------------------------------------------------------

def call_defaults(pipe) -> dict:
    """``__call__``'s defaults, so that prompts are encoded exactly as the pipeline does."""
    return {k: p.default for k, p in inspect.signature(pipe.__call__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def guidance_scale(pipe, value: float | None) -> float:
    return float(call_defaults(pipe)["guidance_scale"] if value is None else value)


@torch.no_grad()
def encode_prompts(pipe, family: Family, prompts: Sequence[str],
                   guidance: float | None = None) -> tuple[torch.Tensor, ...]:
    """The conditioning of ``prompts`` through the pipeline's own ``encode_prompt``
    (``__call__``'s defaults for the sequence length and instructions), in ``cond_keys`` order.
    """
    prompts, defaults = list(prompts), call_defaults(pipe)
    device = pipe._execution_device
    if family.name in ("sana", "pixart"):
        extra = {k: defaults[k] for k in ("max_sequence_length", "complex_human_instruction",
                                          "clean_caption") if k in defaults}
        embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                                device=device, **extra)
        return embeds.float(), mask
    if family.name == "sd3":
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts, prompt_2=None, prompt_3=None, device=device,
            do_classifier_free_guidance=False,
            max_sequence_length=defaults["max_sequence_length"])
        return embeds.float(), pooled.float()
    embeds, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, device=device,
                                           max_sequence_length=defaults["max_sequence_length"])
    g = guidance_scale(pipe, guidance)
    return embeds.float(), pooled.float(), torch.full((len(prompts),), g)


def batched_inputs(family: Family, transformer: nn.Module, x: torch.Tensor, t: torch.Tensor,
                   cond: Sequence[torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The call as tensors batched on dim 0, in the order the HTP export traces (Sana's:
    hidden_states, encoder_hidden_states, timestep, encoder_attention_mask); None for the
    families whose call the export does not trace yet (SD3's pooled projections, FLUX's
    unbatched position ids, PixArt's micro-condition dict)."""
    if family.name != "sana":
        return None
    return call_kwargs(family, transformer, x, t, cond)
