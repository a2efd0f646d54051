"""Stage ``evaluate``: sample fixed prompts and noise, score against real images and the teacher.

Every model gets the same ``eval.num_images`` prompts (cycling over the model's prompt list),
the same seeded noise and the same sampler, so the per-sample difference to the FP samples
(teacher MSE/PSNR/SSIM) is the quantization error alone. The backend (:mod:`fraqat.backends`)
generates and scores: the embedded default with the Euler sampler, FID to the held-out digits
and the digit classifier's prompt accuracy; a real pipeline with its own ``__call__``, FID to
``eval.reference_path`` or the FP images and the CLIP score. FID and prompt accuracy
saturate at the teacher's level on 8x8 digits (science-notes), so the sensitive metric is the
held-out distillation loss: velocity MSE to the teacher on points training never saw.

Image metrics use the samples clipped to [-1, 1]; the samples file keeps them unclipped (a
real pipeline's in float16, what its metrics use too), with the per-item held-out squared
errors so that ``fraqat report`` can bootstrap over items.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch

from fraqat import jobs, paths
from fraqat.backends import Backend, backend_of
from fraqat.errors import FraqatError
from fraqat.eval.fidelity import fidelity, model_size_mb
from fraqat.eval.similarity import ssim
from fraqat.io import load_tensors, read_metadata, save_tensors, write_json
from fraqat.methods import REFERENCE
from fraqat.models.sampling import seeded_noise
from fraqat.params import EvalParams, Params

log = logging.getLogger(__name__)

NOISE_REPORT = paths.EVAL_REPORTS / "noise.json"


def eval_prompts(prompts: Sequence[str], n: int) -> tuple[list[str], torch.Tensor]:
    """``n`` prompts cycling over the model's list, and each one's label (index in it)."""
    labels = torch.arange(n) % len(prompts)
    return [prompts[int(i)] for i in labels], labels


def load_fp_reference(e: EvalParams) -> torch.Tensor:
    """Clipped fp samples of the same prompts/noise, checked to match this evaluation."""
    path = paths.samples_path(REFERENCE, 0)
    hint = "run `fraqat evaluate --method fp --seed 0` first"
    if not path.exists():
        raise FraqatError(f"no fp samples at {path} ({hint})")
    meta = read_metadata(path)
    want = sample_meta(REFERENCE, 0, e)
    for key in ("num_images", "steps", "eval_seed"):
        if meta.get(key) != want[key]:
            raise FraqatError(f"fp samples at {path} were made with {key}={meta.get(key)}, this "
                              f"evaluation uses {want[key]} ({hint})")
    return load_tensors(path)["samples"].clamp(-1, 1)


def sample_meta(method: str, seed: int, e: EvalParams) -> dict[str, str]:
    return {"method": method, "seed": str(seed), "num_images": str(e.num_images),
            "steps": str(e.steps), "eval_seed": str(e.seed)}


def noise_metrics(noise: torch.Tensor, reference_fp: torch.Tensor,
                  scores: Callable[[torch.Tensor], dict], fields: dict, e: EvalParams) -> dict:
    """The untrained-noise sanity row: the same seeded noise, clipped, scored like a model."""
    noise = noise.clamp(-1, 1)
    mse, psnr = fidelity(noise, reference_fp)
    return {"method": "noise", "seed": None, "weight_bits": None, "act_bits": None,
            **scores(noise), **fields, "teacher_mse": mse, "teacher_psnr": psnr,
            "teacher_ssim": ssim(noise, reference_fp), "heldout_distill_loss": None,
            "model_size_mb": None, "num_images": e.num_images,
            "eval_steps": None}


def run(params: Params, method: str, seed: int | None = None) -> None:
    """Evaluate ``method`` at ``seed``, or at every seed of ``params.seeds`` in parallel
    workers (:mod:`fraqat.jobs`); the fp reference has seed 0 only."""
    seeds = [seed] if seed is not None else [0] if method == REFERENCE else list(params.seeds)
    backend = backend_of(params)
    with backend.evaluation_scope():
        jobs.run_all(lambda s: evaluate(params, backend, method, s), seeds,
                     jobs.workers_for(params, len(seeds)))


def evaluate(params: Params, backend: Backend, method: str, seed: int) -> None:
    e, name = params.eval, paths.run_name(method, seed)
    start = time.perf_counter()
    reference_fp = None if method == REFERENCE and seed == 0 else load_fp_reference(e)  # fail early
    ev = backend.evaluation(params, method, seed)
    prompts, labels = eval_prompts(backend.prompts(params), e.num_images)
    samples = ev.generate(prompts, desc=f"sample {name}")
    images = samples.float().clamp(-1, 1)
    if reference_fp is None:
        reference_fp = images
    scores = ev.scorer(reference_fp, prompts, labels)
    sq_err = ev.heldout_errors()
    mse, psnr = fidelity(images, reference_fp)
    metrics = {"method": method, "seed": seed, "weight_bits": ev.weight_bits,
               "act_bits": ev.act_bits, **scores(images), **ev.fields, "teacher_mse": mse,
               "teacher_psnr": psnr, "teacher_ssim": ssim(images, reference_fp),
               "heldout_distill_loss": float(sq_err.mean()),
               "model_size_mb": model_size_mb(ev.model), "num_images": e.num_images,
               "eval_steps": e.steps, "seconds": time.perf_counter() - start}
    noise_row = noise_metrics(seeded_noise(e.num_images, tuple(images.shape[1:]), e.seed),
                              reference_fp, scores, ev.fields, e) if method == REFERENCE \
        else None  # computed before anything is written: all outputs or none
    save_tensors(paths.samples_path(method, seed),
                 {"samples": samples, "labels": labels, "heldout_sq_err": sq_err},
                 metadata={**sample_meta(method, seed, e), **ev.sample_metadata})
    write_json(paths.eval_metrics(method, seed), metrics)
    log.info("%s: FID %.3f (%s), prompt acc %s, teacher MSE %.5f, held-out loss %.6f, "
             "%.3f MB", name, metrics["fid"], metrics["feature_space"],
             metrics["prompt_accuracy"], mse, metrics["heldout_distill_loss"],
             metrics["model_size_mb"])
    if noise_row is not None:
        write_json(NOISE_REPORT, noise_row)
        log.info("noise sanity row: FID %.3f", noise_row["fid"])
