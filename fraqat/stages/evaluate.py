"""Stage ``evaluate``: sample fixed prompts and noise, score against real digits and the teacher.

Every model gets the same ``eval.num_images`` prompts (cycling over the 10 digits), the same
seeded noise and the same Euler sampler, so the per-sample difference to the FP samples
(teacher MSE/PSNR) is the quantization error alone. FID and prompt accuracy saturate at the
teacher's level on 8x8 digits (science-notes), so the sensitive metric is the held-out
distillation loss: velocity MSE to the teacher on a fixed seeded set of noised held-out images.

Image metrics use the samples clipped to [-1, 1]; the samples file keeps them unclipped, with
the per-item held-out squared errors so that ``fraqat report`` can bootstrap over items.

A real pipeline (:mod:`fraqat.eval.pipeline`) generates with its own ``__call__``, the
transformer swapped; FID against ``eval.reference_path`` or the FP pipeline's images;
prompt accuracy has no digit classifier to read it (null), the CLIP score from
``eval.clip_path`` stands in (null without it); the held-out loss is taken on the
calibration set's probe points (other noise draws) against the cached bf16 teacher outputs.
Its samples are stored in float16 (1024-px images are 12 MB each in float32), and its metrics
use those same rounded values.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from fraqat import paths
from fraqat.artifacts import load_split
from fraqat.data import ImageSet, prompt_for
from fraqat.errors import FraqatError
from fraqat.eval.classifier import load_classifier, predict, single_thread
from fraqat.eval.fid import Stats, feature_fn, frechet
from fraqat.eval.pipeline import clip_scorer, image_features, load_reference_images
from fraqat.eval.pipeline import eval_prompts as pipeline_prompts
from fraqat.eval.pipeline import generate as pipeline_generate
from fraqat.io import load_tensors, read_json, read_metadata, save_tensors, write_json
from fraqat.models.folder import load_pipeline, model_family, read_prompts
from fraqat.models.rectified_flow import noisy
from fraqat.models.registry import TextToImage, load_teacher
from fraqat.models.sampling import sample, seeded_noise
from fraqat.models.trajectory import predict_points
from fraqat.params import EvalParams, Params
from fraqat.quant.layers import quant_layers
from fraqat.train.distributed import resolve_device
from fraqat.train.runs import load_quantized_transformer, load_run

log = logging.getLogger(__name__)

NOISE_REPORT = paths.EVAL_REPORTS / "noise.json"
HELDOUT_REPEATS = 4   # each held-out image at 4 seeded (noise, t) draws: 1440 items by default
PIXEL_RANGE = 2.0     # images live in [-1, 1]: PSNR peak-to-peak


def eval_prompts(n: int) -> tuple[list[str], torch.Tensor]:
    labels = torch.arange(n) % 10
    return [prompt_for(int(y)) for y in labels], labels


def load_model(method: str, seed: int) -> tuple[TextToImage, float | None, float | None]:
    """The model to evaluate and its (weight, activation) bits; ``None`` for full precision."""
    if method == "fp":
        return load_teacher(paths.TEACHER), None, None
    folder = paths.run_dir(method, seed)
    model = load_run(folder, paths.TEACHER)  # a run of another teacher: one line, retrain it
    config = read_json(folder / "quant.json")["config"]
    return model, config["weight_bits"], config["act_bits"]


def model_size_mb(model: TextToImage) -> float:
    """Packed transformer size: bits x numel for quantized weights, fp32 for everything else
    (biases, norms, embeddings, activation scales). The prompt encoder is not counted."""
    layers = quant_layers(model.transformer)
    bits_of = {id(layer.weight): layer.effective_bits for _, layer in layers}
    total = sum(p.numel() * (bits_of.get(id(p)) or 32.0) for p in model.transformer.parameters())
    return total / 8 / 1e6


@torch.no_grad()
def heldout_sq_errors(model: TextToImage, teacher: TextToImage, heldout: ImageSet, seed: int,
                      batch_size: int = 512) -> torch.Tensor:
    """Per-item velocity MSE to the teacher at x_t of held-out images, t ~ U(0, 1) (seeded)."""
    x0 = heldout.images.repeat(HELDOUT_REPEATS, 1, 1, 1)
    if model is teacher:
        return torch.zeros(len(x0))
    g = torch.Generator().manual_seed(seed + 1)  # a stream apart from the sampling noise
    labels = heldout.labels.repeat(HELDOUT_REPEATS)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.rand(len(x0), generator=g)
    x_t = noisy(x0, noise, t)
    out = []
    for i in range(0, len(x0), batch_size):
        sl = slice(i, i + batch_size)
        prompts = [prompt_for(int(y)) for y in labels[sl]]
        v_model = model.predict(x_t[sl], t[sl], *model.encode(prompts))
        v_teacher = teacher.predict(x_t[sl], t[sl], *teacher.encode(prompts))
        out.append((v_model - v_teacher).pow(2).flatten(1).mean(1))
    return torch.cat(out)


def generate(model: TextToImage, prompts: list[str], noise: torch.Tensor, e: EvalParams,
             desc: str) -> torch.Tensor:
    batches = range(0, len(prompts), e.batch_size)
    return torch.cat([sample(model, prompts[i : i + e.batch_size], noise[i : i + e.batch_size],
                             e.steps, e.batch_size)
                      for i in tqdm(batches, desc=desc, unit="batch")])


def fidelity(images: torch.Tensor, reference: torch.Tensor) -> tuple[float, float | None]:
    """MSE and PSNR (dB, peak-to-peak 2) of clipped images; PSNR is null when identical."""
    mse = float((images - reference).pow(2).mean())
    return mse, (10 * math.log10(PIXEL_RANGE**2 / mse) if mse > 0 else None)


def load_fp_reference(e: EvalParams) -> torch.Tensor:
    """Clipped fp samples of the same prompts/noise, checked to match this evaluation."""
    path = paths.samples_path("fp", 0)
    hint = "run `fraqat evaluate --method fp --seed 0` first"
    if not path.exists():
        raise FraqatError(f"no fp samples at {path} ({hint})")
    meta = read_metadata(path)
    want = sample_meta("fp", 0, e)
    for key in ("num_images", "steps", "eval_seed"):
        if meta.get(key) != want[key]:
            raise FraqatError(f"fp samples at {path} were made with {key}={meta.get(key)}, this "
                              f"evaluation uses {want[key]} ({hint})")
    return load_tensors(path)["samples"].clamp(-1, 1)


def sample_meta(method: str, seed: int, e: EvalParams) -> dict[str, str]:
    return {"method": method, "seed": str(seed), "num_images": str(e.num_images),
            "steps": str(e.steps), "eval_seed": str(e.seed)}


def run(params: Params, method: str, seed: int) -> None:
    if params.model != "tiny-sana":
        run_pipeline(params, method, seed)
        return
    with single_thread():  # a 0.2 M-parameter model: see single_thread's measurements
        _run(params, method, seed)


def _run(params: Params, method: str, seed: int) -> None:
    e = params.eval
    start = time.perf_counter()
    reference_fp = None if method == "fp" and seed == 0 else load_fp_reference(e)  # fail early
    model, weight_bits, act_bits = load_model(method, seed)
    teacher = model if method == "fp" else load_teacher(paths.TEACHER)
    heldout = load_split("heldout")
    features = feature_fn(e.feature_space, paths.CLASSIFIER, e.inception_path)
    classifier = load_classifier(paths.CLASSIFIER)
    real_stats = Stats.of(features(heldout.images))

    prompts, labels = eval_prompts(e.num_images)
    noise = seeded_noise(e.num_images, model.sample_shape, e.seed)
    samples = generate(model, prompts, noise, e, desc=f"sample {paths.run_name(method, seed)}")
    images = samples.clamp(-1, 1)
    if reference_fp is None:
        reference_fp = images
    sq_err = heldout_sq_errors(model, teacher, heldout, e.seed)
    mse, psnr = fidelity(images, reference_fp)

    def scores(x: torch.Tensor) -> dict:
        return {"fid": frechet(Stats.of(features(x)), real_stats),
                "prompt_accuracy": float((predict(classifier, x) == labels).float().mean())}

    metrics = {"method": method, "seed": seed, "weight_bits": weight_bits, "act_bits": act_bits,
               **scores(images), "feature_space": e.feature_space, "teacher_mse": mse,
               "teacher_psnr": psnr, "heldout_distill_loss": float(sq_err.mean()),
               "model_size_mb": model_size_mb(model), "num_images": e.num_images,
               "eval_steps": e.steps, "seconds": time.perf_counter() - start}
    noise_row = noise_metrics(noise.clamp(-1, 1), reference_fp, scores, e) if method == "fp" \
        else None  # computed before anything is written: all outputs or none
    save_tensors(paths.samples_path(method, seed),
                 {"samples": samples, "labels": labels, "heldout_sq_err": sq_err},
                 metadata=sample_meta(method, seed, e))
    write_json(paths.eval_metrics(method, seed), metrics)
    log.info("%s: FID %.3f (%s), prompt acc %.3f, teacher MSE %.5f, held-out loss %.6f, "
             "%.3f MB", paths.run_name(method, seed), metrics["fid"], e.feature_space,
             metrics["prompt_accuracy"], mse, metrics["heldout_distill_loss"],
             metrics["model_size_mb"])
    if noise_row is not None:
        write_json(NOISE_REPORT, noise_row)
        log.info("noise sanity row: FID %.3f, prompt acc %.3f", noise_row["fid"],
                 noise_row["prompt_accuracy"])


def noise_metrics(noise: torch.Tensor, reference_fp: torch.Tensor,
                  scores: Callable[[torch.Tensor], dict], e: EvalParams) -> dict:
    """The untrained-noise sanity row: the same seeded noise, clipped, scored like a model."""
    mse, psnr = fidelity(noise, reference_fp)
    return {"method": "noise", "seed": None, "weight_bits": None, "act_bits": None,
            **scores(noise), "feature_space": e.feature_space, "teacher_mse": mse,
            "teacher_psnr": psnr, "heldout_distill_loss": None, "model_size_mb": None,
            "num_images": e.num_images, "eval_steps": None}


def run_pipeline(params: Params, method: str, seed: int) -> None:
    e = params.eval
    start = time.perf_counter()
    reference_fp = None if method == "fp" else load_fp_reference(e)  # fail early
    features, feature_label = image_features(e.feature_space, paths.CLASSIFIER,
                                             e.inception_path)
    clip = clip_scorer(e.clip_path) if e.clip_path else None
    device = resolve_device(params.device)
    pipe = load_pipeline(params.model, params.model_path, params.allow_download).to(device)
    family, prompts = model_family(params.model), read_prompts(params.prompts_path)
    if method == "fp":
        transformer, weight_bits, act_bits = pipe.transformer, None, None
    else:
        folder = paths.run_dir(method, seed)
        transformer = load_quantized_transformer(folder).to(device)
        config = read_json(folder / "quant.json")["config"]
        weight_bits, act_bits = config["weight_bits"], config["act_bits"]
    calib = load_tensors(paths.CALIBRATION)

    eval_ps, labels = pipeline_prompts(prompts, e.num_images)
    seeds = [e.seed + i for i in range(e.num_images)]
    images = pipeline_generate(pipe, family, transformer, eval_ps, seeds, params.resolution,
                               e.steps, e.guidance_scale, e.batch_size,
                               desc=f"generate {paths.run_name(method, seed)}")
    images = images.half().float()  # the stored precision: metrics use what is on disk
    if reference_fp is None:
        reference_fp = images.clamp(-1, 1)
    reference = load_reference_images(e.reference_path, params.resolution) \
        if e.reference_path else reference_fp
    real_stats = Stats.of(features(reference))
    c, h, w = calib["x_t"].shape[1:]
    model = TextToImage(transformer, None, (c, h, w),
                        prompt_table=tuple(calib[f"cond.{k}"] for k in family.cond_keys))
    if method == "fp":  # the teacher against itself
        sq_err = torch.zeros(len(calib["probe_t"]))
    else:
        probe_v = load_tensors(paths.TEACHER_OUTPUTS)["probe_v"].float()
        pred = predict_points(model, calib["probe_x_t"], calib["probe_t"], calib["probe_labels"])
        sq_err = (pred - probe_v).pow(2).flatten(1).mean(1)
    mse, psnr = fidelity(images.clamp(-1, 1), reference_fp)

    def scores(x: torch.Tensor) -> dict:
        return {"fid": frechet(Stats.of(features(x.clamp(-1, 1))), real_stats),
                "prompt_accuracy": None,
                "clip_score": float(clip(x, eval_ps).mean()) if clip else None}

    fid_reference = "real images" if e.reference_path else "fp pipeline images"
    common = {"feature_space": feature_label, "fid_reference": fid_reference,
              "model": params.model, "resolution": params.resolution,
              "num_images": e.num_images}
    metrics = {"method": method, "seed": seed, "weight_bits": weight_bits, "act_bits": act_bits,
               **scores(images), **common, "teacher_mse": mse, "teacher_psnr": psnr,
               "heldout_distill_loss": float(sq_err.mean()),
               "model_size_mb": model_size_mb(model), "eval_steps": e.steps,
               "seconds": time.perf_counter() - start}
    noise_row = None
    if method == "fp":
        noise = seeded_noise(e.num_images, tuple(images.shape[1:]), e.seed).clamp(-1, 1)
        n_mse, n_psnr = fidelity(noise, reference_fp)
        noise_row = {"method": "noise", "seed": None, "weight_bits": None, "act_bits": None,
                     **scores(noise), **common, "teacher_mse": n_mse, "teacher_psnr": n_psnr,
                     "heldout_distill_loss": None, "model_size_mb": None, "eval_steps": None}
    save_tensors(paths.samples_path(method, seed),
                 {"samples": images.half(), "labels": labels, "heldout_sq_err": sq_err},
                 metadata={**sample_meta(method, seed, e), "resolution": str(params.resolution)})
    write_json(paths.eval_metrics(method, seed), metrics)
    if noise_row is not None:
        write_json(NOISE_REPORT, noise_row)
    log.info("%s: FID %.3f (%s vs %s), teacher MSE %.5f, held-out loss %.6f, %.3f MB",
             paths.run_name(method, seed), metrics["fid"], feature_label, fid_reference, mse,
             metrics["heldout_distill_loss"], metrics["model_size_mb"])
