"""Investigate bit schedules at equal budget: many (variant, seed) trainings in parallel.

Runs the same code as the ``train`` stage (:func:`fraqat.train.student.train_student`) for each
variant = (method, params overrides), one single-threaded process per run, in a project where
``dvc repro teacher`` (and optionally ``classifier``) already ran. Reports the sensitive
metrics: held-out distillation loss at the deployed bits, and sample MSE to the teacher from
the same noise (plus prompt accuracy when ``data/classifier`` exists).

    python benchmarks/schedule_sweep.py --set default --seeds 0 1 --workers 16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from pipelines.experiments.grid import CHANNEL, FINAL70, parse_sets

VARIANT_SETS: dict[str, list[tuple[str, str, dict]]] = {
    "default": [
        ("ptq", "ptq", {}),
        ("qat", "qat", {}),
        ("fraqat-equal", "fraqat", {}),
        ("int-progressive", "int-progressive", {}),
        ("fraqat-final50", "fraqat", {"schedule.final_fraction": 0.5}),
        ("fraqat-final70", "fraqat", FINAL70),
        ("fraqat-step0.25-final50", "fraqat", {"schedule.step": 0.25,
                                               "schedule.final_fraction": 0.5}),
        ("continuous-final30", "fraqat", {"schedule.fraqat_kind": "continuous",
                                          "schedule.final_fraction": 0.3}),
        ("fraqat-lr-restart", "fraqat", {"train.lr_schedule": "cosine-per-stage"}),
        ("fraqat-start6-final50", "fraqat", {"schedule.start_bits": 6,
                                             "schedule.final_fraction": 0.5}),
        ("qat-warmup", "qat", {"train.warmup_steps": 30}),
        ("fraqat-warmup", "fraqat", {"train.warmup_steps": 30}),
        ("qat-control-1/9-steps", "qat", {"train.steps": 67}),
        ("qat-channel", "qat", CHANNEL),
        ("fraqat-channel", "fraqat", CHANNEL),
    ],
    "science": [
        ("qat", "qat", {}),
        ("fraqat-equal", "fraqat", {}),
        ("qat-constlr", "qat", {"train.lr_schedule": "constant"}),
        ("fraqat-constlr", "fraqat", {"train.lr_schedule": "constant"}),
        ("fraqat-restart-final50", "fraqat", {"train.lr_schedule": "cosine-per-stage",
                                              "schedule.final_fraction": 0.5}),
        ("fraqat-final80", "fraqat", {"schedule.final_fraction": 0.8}),
        ("fraqat-final90", "fraqat", {"schedule.final_fraction": 0.9}),
        ("fraqat-step0.25-final70", "fraqat", {"schedule.step": 0.25, **FINAL70}),
        ("continuous-final70", "fraqat", {"schedule.fraqat_kind": "continuous",
                                          **FINAL70}),
        ("fraqat-start5-final70", "fraqat", {"schedule.start_bits": 5, **FINAL70}),
        ("qat-x0.5", "qat", {"train.steps": 300}),
        ("fraqat-final70-x0.5", "fraqat", {"train.steps": 300, **FINAL70}),
        ("qat-x2", "qat", {"train.steps": 1200}),
        ("fraqat-final70-x2", "fraqat", {"train.steps": 1200, **FINAL70}),
        ("qat-channel", "qat", CHANNEL),
        ("fraqat-channel-final70", "fraqat", {**CHANNEL, **FINAL70}),
        ("qat-w3", "qat", {"bits": 3}),
        ("fraqat-w3-final70", "fraqat", {"bits": 3, **FINAL70}),
        ("qat-w3-channel", "qat", {"bits": 3, **CHANNEL}),
        ("fraqat-w3-channel-final70", "fraqat", {"bits": 3, **CHANNEL, **FINAL70}),
    ],
    "confirm-channel": [
        ("qat-channel", "qat", CHANNEL),
        ("fraqat-channel-final70", "fraqat", {**CHANNEL, **FINAL70}),
        ("fraqat-channel-final90", "fraqat", {**CHANNEL, "schedule.final_fraction": 0.9}),
        ("qat-channel-x2", "qat", {**CHANNEL, "train.steps": 800}),
        ("fraqat-channel-final70-x2", "fraqat", {**CHANNEL, **FINAL70, "train.steps": 800}),
    ],
    # the model-size axis: run in a project whose teacher is wider/deeper (see SCHEDULES.md)
    "size": [
        ("qat", "qat", {}),
        ("fraqat-equal", "fraqat", {}),
        ("qat-target-steps-equal", "qat-target-steps", {}),
        ("fraqat-final70", "fraqat", FINAL70),
        ("qat-channel", "qat", CHANNEL),
        ("fraqat-channel-final70", "fraqat", {**CHANNEL, **FINAL70}),
    ],
    "bits3": [
        ("qat-w3", "qat", {"bits": 3}),
        ("fraqat-w3", "fraqat", {"bits": 3}),
        ("fraqat-w3-final50", "fraqat", {"bits": 3, "schedule.final_fraction": 0.5}),
        ("qat-w2", "qat", {"bits": 2}),
        ("fraqat-w2", "fraqat", {"bits": 2}),
        ("fraqat-w2-final50", "fraqat", {"bits": 2, "schedule.final_fraction": 0.5}),
    ],
}


def run_one(job: tuple[str, str, dict, int, dict]) -> dict:
    name, method, overrides, seed, base = job
    import torch

    torch.set_num_threads(1)
    from fraqat.artifacts import load_tuned_lrs
    from fraqat.params import load_params
    from fraqat.train.student import peak_lr, train_student

    params = load_params("params.yaml", {**base, **overrides})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        student, result = train_student(params, method, seed, Path(tmp) / "ckpt",
                                        Path(tmp) / "log.tsv",
                                        lr=peak_lr(params, method, load_tuned_lrs()))
        log_rows = (Path(tmp) / "log.tsv").read_text().splitlines()
    probe = [(int(r.split("\t")[0]), float(r.split("\t")[4])) for r in log_rows[1:]
             if r.split("\t")[4]]
    return {"variant": name, "method": method, "seed": seed, "overrides": overrides,
            "heldout_loss": result["final_target_loss"], "train_loss": result["final_loss"],
            "probe": probe, "seconds": time.perf_counter() - start,
            **sample_metrics(student, params)}


def sample_metrics(student, params, n: int = 200, steps: int = 10) -> dict:
    """MSE to the teacher's samples from the same noise and prompts (+ prompt accuracy)."""
    import torch

    from fraqat import paths
    from fraqat.data import PROMPTS
    from fraqat.models.registry import load_teacher
    from fraqat.models.sampling import sample, seeded_noise
    from fraqat.train.distributed import resolve_device

    device = resolve_device(params.device)
    prompts = [PROMPTS[i % 10] for i in range(n)]
    noise = seeded_noise(n, (1, 8, 8), 1234).to(device)
    ref = sample(load_teacher(paths.TEACHER).to(device), prompts, noise, steps).cpu()
    out = sample(student.to(device), prompts, noise, steps).cpu()
    metrics = {"teacher_mse": torch.mean((out - ref) ** 2).item()}
    if (paths.CLASSIFIER / "config.json").exists():
        from fraqat.eval.classifier import load_classifier, predict

        clf = load_classifier(paths.CLASSIFIER)
        labels = torch.tensor([i % 10 for i in range(n)])
        metrics["prompt_accuracy"] = (predict(clf, out) == labels).float().mean().item()
        metrics["teacher_prompt_accuracy"] = (predict(clf, ref) == labels).float().mean().item()
    return metrics


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]
        row = {"variant": name, "n": len(rs)}
        for key in ("heldout_loss", "teacher_mse", "prompt_accuracy", "seconds"):
            vals = [r[key] for r in rs if key in r]
            if vals:
                row[key] = statistics.mean(vals)
                row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", nargs="+", default=["default"], choices=sorted(VARIANT_SETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("-S", dest="base", action="append", default=[],
                    help="base override for every run, e.g. -S train.steps=600")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    try:
        base = parse_sets(args.base)
    except ValueError as exc:
        ap.error(str(exc))
    jobs = [(n, m, o, s, base) for vs in args.set for n, m, o in VARIANT_SETS[vs]
            for s in args.seeds]
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:  # CUDA-safe
        rows = list(pool.map(run_one, jobs))
    summary = summarize(rows)
    print(f"{'variant':28s} {'n':>2s} {'held-out loss':>22s} {'MSE to teacher':>22s} "
          f"{'prompt acc':>10s} {'s/run':>6s}")
    for r in summary:
        acc = f"{r['prompt_accuracy']:.3f}" if "prompt_accuracy" in r else "-"
        print(f"{r['variant']:28s} {r['n']:2d} "
              f"{r['heldout_loss']:.5f} ± {r['heldout_loss_std']:.5f}"
              f"    {r['teacher_mse']:.5f} ± {r['teacher_mse_std']:.5f} {acc:>10s} "
              f"{r['seconds']:6.0f}")
    if args.json:
        args.json.write_text(json.dumps({"base": base, "runs": rows, "summary": summary},
                                        indent=2))


if __name__ == "__main__":
    main()
