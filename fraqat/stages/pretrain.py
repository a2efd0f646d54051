"""Stage ``pretrain``: train the embedded default's FP teacher with flow matching.

Stands in for "download the pretrained checkpoint": a tiny ``SanaTransformer2DModel`` and a
learned prompt encoder trained from scratch on the digits (``data.source``), written to
``data/teacher``. On CUDA it runs under bf16 autocast (``train.autocast``'s rule: ``auto`` =
bf16 on CUDA, fp32 on the CPU, so the CPU teacher is the fp32 one bit for bit).
``outliers.fraction > 0`` then rescales channel pairs (:mod:`fraqat.models.outliers`: same FP
function, weights with outliers like a large pretrained DiT's); ``reports/teacher.json`` holds
the weights' abs-max/std and kurtosis either way.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch
from tqdm import tqdm

from fraqat import paths
from fraqat.artifacts import load_split
from fraqat.data import PROMPTS, prompt_for
from fraqat.io import atomic_path, write_json
from fraqat.models.outliers import add_outliers, summarize, weight_stats
from fraqat.models.rectified_flow import cosine_lr, noisy, sample_times, velocity
from fraqat.models.registry import build_tiny_sana, load_transformer, write_pipeline_pointer
from fraqat.params import Params
from fraqat.train import distributed

log = logging.getLogger(__name__)



def run(params: Params) -> None:
    if params.model != "tiny-sana":  # a real model is pretrained: point at its pipeline
        stats = weight_stats(load_transformer(params.model, params.model_path,
                                              params.allow_download))
        log.info("teacher weights: %s", summarize(stats))
        write_pipeline_pointer(paths.TEACHER, params.model, str(params.model_path))
        write_json(paths.TEACHER_REPORT, {**summarize(stats), "outlier_fraction": 0.0,
                                          "outlier_factor": None, "rescaled_channels": {},
                                          "layers": stats})
        return
    p, device = params.pretrain, distributed.resolve_device(params.device)
    torch.manual_seed(p.seed)
    gen = torch.Generator().manual_seed(p.seed)
    train = load_split("train")
    model = build_tiny_sana(p.width, p.layers, p.heads, PROMPTS, p.patch_size,
                            train.images.shape[-1]).to(device)
    bf16 = params.train.autocast == "bf16" or (params.train.autocast == "auto"
                                               and device.type == "cuda")  # as train's rule
    amp = (lambda: torch.autocast(device.type, torch.bfloat16)) if bf16 else contextlib.nullcontext
    prompts = [prompt_for(y) for y in train.labels]
    opt = torch.optim.AdamW(list(model.parameters()), lr=p.lr, weight_decay=0.01)
    log.info("teacher: %d parameters, %d steps, batch %d, on %s%s",
             sum(x.numel() for x in model.parameters()), p.steps, p.batch_size, device,
             " in bf16 autocast" if bf16 else "")
    start, ema = time.perf_counter(), None
    bar = tqdm(range(p.steps), desc="pretrain", mininterval=2)
    model.train()
    for step in bar:
        idx = torch.randint(0, len(train.labels), (p.batch_size,), generator=gen)
        x0 = train.images[idx]
        noise = torch.randn(x0.shape, generator=gen)
        x0, noise, t = x0.to(device), noise.to(device), sample_times(len(idx), gen).to(device)
        with amp():
            hidden, mask = model.encode([prompts[i] for i in idx])
            pred = model.predict(noisy(x0, noise, t), t, hidden, mask)
        loss = torch.nn.functional.mse_loss(pred.float(), velocity(x0, noise))
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, p.steps, p.lr, warmup=min(100, p.steps // 10))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}", refresh=False)
    seconds = time.perf_counter() - start
    log.info("teacher trained in %.1f s, final loss (EMA) %.4f", seconds, ema)
    model = model.to("cpu").eval()
    o, chosen = params.outliers, {}
    if o.fraction > 0:
        chosen = add_outliers(model.transformer, o.fraction, o.factor, o.seed)
    stats = weight_stats(model.transformer)
    log.info("teacher weights: %s", summarize(stats))
    with atomic_path(paths.TEACHER) as out:
        model.save_pretrained(out, meta={
            "model": "tiny-sana", "train_seconds": seconds, "final_loss": ema, "steps": p.steps})
    write_json(paths.TEACHER_REPORT, {**summarize(stats), "outlier_fraction": o.fraction,
                                      "outlier_factor": o.factor, "rescaled_channels": chosen,
                                      "layers": stats})
