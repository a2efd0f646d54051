"""Shared pieces of the GPU benchmarks: timers, medians with their spread, the device record.

Timing follows the device notes (METHOD.md): CUDA events around the region after warm-up,
several repeats of several calls, the median of each repeat and the spread over repeats (one
run of the old benchmark moved by 10+ points, so a single median is not a result). Variants
that are compared are timed interleaved in one process (:func:`interleaved`): timed one after
another, a drifting GPU clock once made one W4A8 run 0.82x FP and the next 1.00x.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 20) -> list[float]:
    """Per-call times in ms: CUDA events on a GPU, the host clock after a sync elsewhere."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def wall_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 10) -> list[float]:
    """Per-call host wall times in ms, synchronized before and after each call: what a loop
    that waits for every step (the trainer reads each loss) experiences, launch time included."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, reps: int,
                timer: Callable[..., list[float]] = wall_ms,
                on_round: Callable[[dict[str, list[list[float]]]], bool] | None = None
                ) -> dict[str, list[list[float]]]:
    """Per-round times of every function, timed in alternating rounds (A B C, B C A, ...).

    Clock drift during a benchmark (a GPU warming up or throttling, a neighbour's load) then
    lands on every variant alike instead of on whichever ran first. ``on_round`` sees the times
    after each full round (to save partial results); returning False stops early.
    """
    names = list(fns)
    out: dict[str, list[list[float]]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % max(len(names), 1)
        for name in names[k:] + names[:k]:
            out[name].append(timer(fns[name], warmup=1, reps=reps))
        if on_round is not None and not on_round(out):
            break
    return out


def spread(repeats: list[list[float]]) -> dict:
    """Median over all samples, and the min / max of the per-repeat medians (the spread)."""
    medians = [statistics.median(r) for r in repeats]
    return {"median": statistics.median([t for r in repeats for t in r]),
            "repeat_medians": medians, "lo": min(medians), "hi": max(medians),
            "samples": sum(len(r) for r in repeats)}


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartile (the interquartile range's ends); one value: itself twice."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def meta() -> dict:
    """Device, versions, date and command line of this run."""
    def version(mod: str) -> str:
        try:
            return __import__(mod).__version__
        except ImportError:
            return "missing"
    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": version("triton"), "diffusers": version("diffusers"),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join([_program(), *sys.argv[1:]])}


def _program() -> str:
    """``python -m benchmarks.x`` as typed (``sys.argv[0]`` holds the module's file path)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec else f"python {sys.argv[0]}"


def write_json(path: Path | None, data: dict) -> None:
    """Whole file or nothing (a killed run leaves no half-written JSON)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"


def positive(text: str) -> int:
    """An argparse type: an integer >= 1, else one line naming the value and what is allowed."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed (allowed: an integer >= 1)")
    return value
