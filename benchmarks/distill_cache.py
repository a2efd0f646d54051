"""Speed-up of distilling against cached teacher velocities vs running the FP teacher each step.

    python -m benchmarks.distill_cache --steps 20 --batch-size 64 --threads 2 --json out.json

The ``teacher`` stage runs the FP teacher once over the calibration set and QAT reads the
cached velocities; the alternative runs a teacher forward (``torch.no_grad``) inside every
training step. Both modes time the same step: the quantized student's forward + MSE +
backward + AdamW at ``--batch-size``, on batches drawn as the trainer draws them
(:func:`fraqat.train.trainer.batch_indices`). The tiny Sana teacher (``build_tiny_sana(64, 2, 2)``)
has random weights, which is fine for timing. The two modes run interleaved, each on its own
student + optimizer, so load from other processes hits both alike; reported: median wall and
CPU (process time, all threads: less sensitive to a loaded machine) ms/step after ``--warmup``
steps, and the one-off cost of filling the cache.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.timing import positive
from fraqat.data import PROMPTS
from fraqat.models.registry import TextToImage, build_tiny_sana, predict_all
from fraqat.quant.layers import QuantConfig
from fraqat.train.runs import quantized_copy
from fraqat.train.trainer import DistillData, batch_indices, calibrate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=positive, default=20, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per mode first")
    p.add_argument("--batch-size", type=positive, default=64)
    p.add_argument("--samples", type=positive, default=2048,
                   help="calibration set size (what the teacher stage caches)")
    p.add_argument("--threads", type=positive, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def make_data(teacher: TextToImage, n: int, seed: int) -> tuple[DistillData, float]:
    """Random calibration inputs + the cached teacher velocities; returns the cache time (s)."""
    g = torch.Generator().manual_seed(seed)
    calib = {"x_t": torch.randn(n, *teacher.sample_shape, generator=g),
             "t": torch.rand(n, generator=g), "labels": torch.randint(0, 10, (n,), generator=g)}
    t0 = time.perf_counter()
    v = predict_all(teacher, calib)
    return DistillData(calib["x_t"], calib["t"], calib["labels"], v), time.perf_counter() - t0


def make_step(student: TextToImage, data: DistillData, batch_size: int, seed: int,
              target: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]):
    """One trainer step (as :meth:`fraqat.train.trainer.Trainer.fit`) with ``target`` velocities."""
    opt = torch.optim.AdamW([p for p in student.transformer.parameters() if p.requires_grad],
                            lr=1e-4, weight_decay=0.0)
    with torch.no_grad():
        prompt_hidden, prompt_mask = student.encoder.encode(list(PROMPTS))
    state = {"step": 0}

    def step() -> float:
        idx = batch_indices(len(data), batch_size, seed, state["step"])
        state["step"] += 1
        labels = data.labels[idx]
        hidden, mask = prompt_hidden[labels], prompt_mask[labels]
        x_t, t = data.x_t[idx], data.t[idx]
        goal = target(idx, hidden, mask)
        loss = F.mse_loss(student.predict(x_t, t, hidden, mask), goal)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    teacher = build_tiny_sana(64, 2, 2, PROMPTS).eval()
    teacher.encoder.requires_grad_(False)
    data, cache_s = make_data(teacher, args.samples, args.seed)

    student = quantized_copy(teacher, QuantConfig(weight_bits=4, act_bits=8))
    calibrate(student, data)
    students = {"cached": student, "on-the-fly": copy.deepcopy(student)}
    for s in students.values():
        s.transformer.train()

    @torch.no_grad()
    def on_the_fly(idx: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return teacher.predict(data.x_t[idx], data.t[idx], hidden, mask)

    targets = {"cached": lambda idx, hidden, mask: data.teacher_v[idx], "on-the-fly": on_the_fly}
    steps = {m: make_step(students[m], data, args.batch_size, args.seed, targets[m])
             for m in students}
    wall: dict[str, list[float]] = {m: [] for m in steps}
    cpu: dict[str, list[float]] = {m: [] for m in steps}
    for i in range(args.warmup + args.steps):
        for mode, step in steps.items():
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            if i >= args.warmup:
                wall[mode].append((time.perf_counter() - w0) * 1e3)
                cpu[mode].append((time.process_time() - c0) * 1e3)

    ms = {m: statistics.median(v) for m, v in wall.items()}
    cpu_ms = {m: statistics.median(v) for m, v in cpu.items()}
    saved_ms = ms["on-the-fly"] - ms["cached"]
    result = {
        "ms_per_step": ms, "speedup": ms["on-the-fly"] / ms["cached"],
        "cpu_ms_per_step": cpu_ms, "cpu_speedup": cpu_ms["on-the-fly"] / cpu_ms["cached"],
        "cache_fill_s": cache_s,
        "break_even_steps": cache_s * 1e3 / saved_ms if saved_ms > 0 else None,
        "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
        "samples": args.samples, "threads": args.threads,
        "student_params": sum(p.numel() for p in student.transformer.parameters()),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
    }
    print(f"{'mode':<12} {'wall ms/step':>13} {'CPU ms/step':>12}   (medians of {args.steps}, "
          f"batch {args.batch_size}, {args.threads} threads)")
    for mode in ms:
        print(f"{mode:<12} {ms[mode]:>13.1f} {cpu_ms[mode]:>12.1f}")
    print(f"{'speed-up':<12} {result['speedup']:>12.2f}x {result['cpu_speedup']:>11.2f}x")
    print(f"cache fill   {cache_s * 1e3:>9.1f} ms once ({args.samples} samples), "
          f"break-even after {result['break_even_steps'] or float('nan'):.1f} steps")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
