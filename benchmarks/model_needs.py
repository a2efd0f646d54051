"""What a user with the real weights needs per model, for the assumed paper-size run.

:mod:`benchmarks.pipeline_stages` measures every stage of the Sana-600M pipeline (random
weights) on one GPU; :func:`project` turns that into each model's memory, disk and hours for
an *assumed* paper-size run (:data:`PAPER_RUN`: the paper's step count and batch are not in
the project's notes) by the rules of :mod:`fraqat.needs` (one copy, which ``fraqat plan``
uses too). This module keeps the meta-device builds of the full-size configs
(:func:`param_counts`) that ``tests/benchmarks`` checks :data:`fraqat.needs.SPECS` against.

The small measured run carries fixed costs (model loading, CUDA-graph capture) into its
seconds per unit, so the hours lean high.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from benchmarks.configs import DC_AE_SANA, PIXART_SIGMA, SANA_600M
from fraqat import needs

GB, GIB = needs.GB, needs.GIB
PAPER_RUN = dict(resolution=1024, steps=10_000, batch=8, methods=2, seeds=1, points=10_000,
                 prompts=1_000, eval_images=1_000)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
              feed_forward_proj="gated-gelu")
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, projection_dim=768, max_position_embeddings=77)
CLIP_G = dict(CLIP_L, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
              num_attention_heads=20, projection_dim=1280)
GEMMA2_2B = dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                 num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256)
KL_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4)


def _models() -> dict[str, dict]:
    """name -> transformer, text encoders, VAE (class, config), latent (C, H, W) at 1024 px,
    patch, joint text tokens (in the image attention), text (tokens, width), sampling steps."""
    from benchmarks.multi_gpu import FLUX_SCHNELL, SANA_1600M, SD35_MEDIUM

    sana = dict(encoders=[("Gemma2Model", GEMMA2_2B)], vae=("AutoencoderDC", DC_AE_SANA),
                latent=(32, 32, 32), patch=1, joint=0, text=(300, 2304), eval_steps=20)
    kl16 = ("AutoencoderKL", dict(KL_VAE, latent_channels=16))
    return {
        "Sana-600M": dict(sana, transformer=("SanaTransformer2DModel", SANA_600M)),
        "Sana-1.6B": dict(sana, transformer=("SanaTransformer2DModel", SANA_1600M)),
        "PixArt-Σ": dict(transformer=("PixArtTransformer2DModel", PIXART_SIGMA),
                         encoders=[("T5EncoderModel", T5_XXL)],
                         vae=("AutoencoderKL", dict(KL_VAE, latent_channels=4)),
                         latent=(4, 128, 128), patch=2, joint=0, text=(300, 4096),
                         eval_steps=20),
        "SD3.5-Medium": dict(transformer=("SD3Transformer2DModel", SD35_MEDIUM),
                             encoders=[("CLIPTextModelWithProjection", CLIP_L),
                                       ("CLIPTextModelWithProjection", CLIP_G),
                                       ("T5EncoderModel", T5_XXL)],
                             vae=kl16, latent=(16, 128, 128), patch=2, joint=333,
                             text=(333, 4096), eval_steps=28),
        "FLUX.1-schnell": dict(transformer=("FluxTransformer2DModel", FLUX_SCHNELL),
                               encoders=[("CLIPTextModel", CLIP_L), ("T5EncoderModel", T5_XXL)],
                               vae=kl16, latent=(16, 128, 128), patch=2, joint=256,
                               text=(256, 4096), eval_steps=4),
    }


def _build_meta(cls_name: str, cfg: dict) -> torch.nn.Module:
    import diffusers
    import transformers

    with torch.device("meta"):
        if hasattr(diffusers, cls_name):
            return getattr(diffusers, cls_name)(**cfg)
        config_cls = {"Gemma2Model": "Gemma2Config", "T5EncoderModel": "T5Config"}.get(
            cls_name, "CLIPTextConfig")
        return getattr(transformers, cls_name)(getattr(transformers, config_cls)(**cfg))


@functools.cache
def param_counts() -> dict[str, dict]:
    """Each model's transformer and whole-pipeline parameter counts, and its depth x width."""
    out = {}
    for name, m in _models().items():
        tr = _build_meta(*m["transformer"])
        n_tr = sum(p.numel() for p in tr.parameters())
        rest = [_build_meta(*m["vae"])] + [_build_meta(*e) for e in m["encoders"]]
        cfg = m["transformer"][1]
        depth = cfg["num_layers"] + cfg.get("num_single_layers", 0)
        out[name] = {"transformer": n_tr,
                     "pipeline": n_tr + sum(p.numel() for r in rest for p in r.parameters()),
                     "depth_width": depth * cfg["num_attention_heads"] * cfg["attention_head_dim"]}
    return out


def tokens(latent: tuple[int, int, int], patch: int, joint: int) -> int:
    """Tokens one sample puts through the transformer's attention: image patches (+ joint text)."""
    return latent[1] * latent[2] // patch**2 + joint


def project(result: dict, paper: dict | None = None, acts: dict | None = None) -> dict:
    """Per-model needs for the paper-size run, from the measured ``result`` by the rules of
    :mod:`fraqat.needs` (``acts``: per-family training activations; default none, i.e.
    Sana-600M's scaled)."""
    paper = dict(PAPER_RUN if paper is None else paper)
    ref, rows = needs.reference(result), []
    runs = paper["methods"] * paper["seeds"]
    run = needs.Run(resolution=paper["resolution"], steps=paper["steps"], batch=paper["batch"],
                    trained_runs=runs, eval_runs=runs + 1, points=paper["points"],
                    prompts=paper["prompts"], eval_images=paper["eval_images"], eval_steps=0)
    for key, spec in needs.SPECS.items():
        m = dataclasses.replace(run, eval_steps=spec.eval_steps)
        disk = needs.disk_bytes(key, m)
        secs = needs.seconds(key, m, ref)
        secs.pop("tune")
        secs["evaluate"] = needs.evaluate_upper_seconds(key, m, ref)  # as the block says
        rows.append({"model": spec.label, "transformer_params": spec.transformer,
                     "pipeline_params": spec.pipeline, "tokens": needs.tokens(spec),
                     "train_static_gib": needs.STATIC * spec.transformer / GIB,
                     "train_gib": needs.train_bytes(key, paper["batch"], paper["resolution"], 1,
                                                    False, False, acts or {}, ref) / GIB,
                     "infer_gib": needs.infer_bytes(key, paper["resolution"], ref) / GIB,
                     "disk_gb": {k: v / GB for k, v in disk.items()},
                     "disk_total_gb": sum(disk.values()) / GB,
                     "hours": {k: v / 3600 for k, v in secs.items()},
                     "hours_total": sum(secs.values()) / 3600,
                     "eval_steps": spec.eval_steps})
    return {"paper_run": paper, "reference": ref, "models": rows}
