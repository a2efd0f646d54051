"""What a user with the real weights needs per model, scaled from the measured Sana-600M run.

:mod:`benchmarks.pipeline_stages` measures every stage of the Sana-600M pipeline (random
weights) on one GPU; :func:`project` scales those numbers to each model's parameter count
(full-size configs built on the meta device: nothing is downloaded or allocated) and token
count at 1024 px, for an *assumed* paper-size run (:data:`PAPER_RUN`: the paper's step count
and batch are not in the project's notes). The scaling model, first order:

- training memory = 16 B/param (fp32 weights + grads + AdamW's two moments)
  + the measured activation part × (tokens × depth × width) ratio × batch ratio;
- calibrate / evaluate memory = 4 B/param of the whole fp32 pipeline on the GPU (the stages
  load it so) and of the quantized transformer ``evaluate`` loads beside it, + the activation
  part measured with the pipeline alone (``calibrate``, ``evaluate fp``) × the same ratio;
- time of every stage ∝ transformer params × tokens per sample (the FLOPs of its linear
  layers; attention's quadratic part is left out), from the measured seconds per unit of work;
- disk = the bf16 checkpoint (2 B/param) + calibration points (fp32 latents) and encoded
  prompts (fp32) + the bf16 teacher cache + fp32 students + float16 sample images.

The small measured run carries fixed costs (model loading, CUDA-graph capture) into its
seconds per unit, so the hours lean high.
"""

from __future__ import annotations

import functools
import math

import torch

from benchmarks.configs import DC_AE_SANA, PIXART_SIGMA, SANA_600M

GB = 1e9
GIB = 2**30
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


def _stage(result: dict, prefix: str) -> list[dict]:
    return [s for s in result["stages"] if s["stage"].split()[0] == prefix]


def reference(result: dict) -> dict:
    """The measured run's per-unit numbers: bytes of activations, seconds per unit of work."""
    run = result["run"]
    n_tr, n_pipe = run["params"]["transformer"], sum(run["params"].values())
    trained = [m for m, s in run["train_steps"].items() if s > 0]
    step_s = sum(run["train_wall_seconds"][m] / run["train_steps"][m] for m in trained) / max(
        1, len(trained))
    peak = lambda rows: max((r["peak_allocated_gib"] or 0.0) for r in rows) * GIB  # noqa: E731
    points = run["num_samples"] + run["probe"]
    evals = _stage(result, "evaluate")
    return {"transformer": n_tr, "tokens": tokens(tuple(run["latent"]), 1, 0),
            "depth_width": run["depth_width"], "batch": run["batch"],
            "train_act_bytes": max(0.0, peak(_stage(result, "train")) - 16 * n_tr),
            "infer_act_bytes": max(0.0, peak([r for r in evals if r["stage"] == "evaluate fp"]
                                             + _stage(result, "calibrate")) - 4 * n_pipe),
            "train_step_s": step_s,
            "teacher_point_s": _stage(result, "teacher")[0]["wall_s"] / points,
            "calibrate_point_s": _stage(result, "calibrate")[0]["wall_s"]
            / (points + run["validation"]),
            "eval_image_step_s": sum(r["wall_s"] for r in evals)
            / (len(evals) * run["images"] * run["eval_steps"])}


def project(result: dict, paper: dict | None = None) -> dict:
    """Per-model needs for the paper-size run, from the measured ``result``."""
    paper = dict(PAPER_RUN if paper is None else paper)
    ref, rows = reference(result), []
    for name, m in _models().items():
        n = param_counts()[name]
        tok = tokens(m["latent"], m["patch"], m["joint"])
        act = tok * n["depth_width"] / (ref["tokens"] * ref["depth_width"])
        work = n["transformer"] * tok / (ref["transformer"] * ref["tokens"])
        latent = math.prod(m["latent"])
        runs = paper["methods"] * paper["seeds"]
        disk = {"checkpoint": 2 * n["pipeline"],
                "calibration": 4 * paper["points"] * latent
                + 4 * paper["prompts"] * m["text"][0] * m["text"][1],
                "teacher": 2 * paper["points"] * latent,
                "runs": 4 * n["transformer"] * runs
                + 2 * 3 * paper["resolution"] ** 2 * paper["eval_images"] * (runs + 1)}
        seconds = {"calibrate": ref["calibrate_point_s"] * work * paper["points"],
                   "teacher": ref["teacher_point_s"] * work * paper["points"],
                   "train": ref["train_step_s"] * work * paper["batch"] / ref["batch"]
                   * paper["steps"] * runs,
                   "evaluate": ref["eval_image_step_s"] * work * paper["eval_images"]
                   * m["eval_steps"] * (runs + 1)}
        rows.append({"model": name, "transformer_params": n["transformer"],
                     "pipeline_params": n["pipeline"], "tokens": tok,
                     "train_static_gib": 16 * n["transformer"] / GIB,
                     "train_gib": (16 * n["transformer"] + ref["train_act_bytes"] * act
                                   * paper["batch"] / ref["batch"]) / GIB,
                     "infer_gib": (4 * (n["pipeline"] + n["transformer"])
                                   + ref["infer_act_bytes"] * act) / GIB,
                     "disk_gb": {k: v / GB for k, v in disk.items()},
                     "disk_total_gb": sum(disk.values()) / GB,
                     "hours": {k: v / 3600 for k, v in seconds.items()},
                     "hours_total": sum(seconds.values()) / 3600,
                     "eval_steps": m["eval_steps"]})
    return {"paper_run": paper, "reference": ref, "models": rows}
