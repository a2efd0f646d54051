"""A stage's independent runs (seeds, learning rates) in parallel worker processes.

Every run computes on one pinned thread (:mod:`fraqat.threads`) and seeds itself, so running
several at once, one per core, changes only the wall time, never a number. Workers are forked:
they inherit the parent's imports (seconds per stage) and its loaded inputs, so the mapped
function need not be picklable; only the items and results travel.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from fraqat.params import Params
from fraqat.threads import pin_threads

T = TypeVar("T")
R = TypeVar("R")
JOBS_ENV = "FRAQAT_JOBS"  # workers per stage; unset: one per core

_task: Callable[[Any], Any] | None = None  # the mapped function, inherited by the forked workers


def cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1


def workers_for(params: Params, items: int) -> int:
    """How many runs of a stage go at once: ``FRAQAT_JOBS``, else one per core; one (in this
    process) where the runs would share a device or span processes of their own: a GPU, a
    torchrun launch, a real pipeline model."""
    from fraqat.models.registry import REGISTRY
    from fraqat.train.distributed import resolve_device

    if params.train.processes > 1 or REGISTRY[params.model].kind != "embedded" \
            or resolve_device(params.device).type != "cpu":
        return 1
    wanted = os.environ.get(JOBS_ENV)
    return max(1, min(items, int(wanted) if wanted else cores()))


def _call(item: Any) -> Any:
    assert _task is not None
    return _task(item)


def run_all(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[fn(item) for item in items]``, ``workers`` at a time. Every run goes to its end even
    when another fails, so finished outputs are kept; then the first failure (in item order)
    is raised, as the stage's one error."""
    global _task
    results: list[Any] = []
    errors: list[BaseException] = []
    if workers <= 1:
        for item in items:
            try:
                results.append(fn(item))
            except Exception as exc:
                errors.append(exc)
                results.append(None)
    else:
        _task = fn
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                     initializer=pin_threads) as pool:
                futures = [pool.submit(_call, item) for item in items]
                for future in futures:
                    try:
                        results.append(future.result())
                    except Exception as exc:
                        errors.append(exc)
                        results.append(None)
        finally:
            _task = None
    if errors:
        raise errors[0]
    return results
