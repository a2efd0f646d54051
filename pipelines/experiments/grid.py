"""What the experiment drivers share: the one override function, the ``-S`` command line they
queue, and the cell building blocks and report constants.

A cell is a mapping of dotted ``params.yaml`` keys to values, applied on top of a base file
exactly as ``dvc exp run -S key=value`` does; :func:`with_overrides` is that application
(:mod:`fraqat.params`'s, the one ``load_params`` uses), so a DVC cell, a GPU-machine cell
(:mod:`pipelines.experiments.regime_gpu`) and a sweep variant (``benchmarks/schedule_sweep.py``)
mean the same params.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import yaml

from fraqat.params import with_overrides
from fraqat.report.fair import SENSITIVE as EVAL_SENSITIVE
from fraqat.report.fair import WIN_PCT

__all__ = ["CHANNEL", "FINAL70", "OUTLIERS", "SENSITIVE", "WIN_PCT", "exp_run_command",
           "parse_sets", "with_overrides"]

# cell building blocks
FINAL70 = {"schedule.final_fraction": 0.7}  # most steps at the target bits
CHANNEL = {"quant.granularity": "channel"}
OUTLIERS = {"outliers.fraction": 0.015, "outliers.factor": 50.0}  # the teacher's outliers

# report constants: the sensitive metrics by their short (CSV column) names, same labels
SHORT = {"heldout_distill_loss": "heldout_loss", "teacher_mse": "teacher_mse"}
SENSITIVE = {SHORT[metric]: label for metric, label in EVAL_SENSITIVE.items()}


def exp_run_command(name: str, sets: Mapping[str, object],
                    targets: Iterable[str] = ()) -> list[str]:
    """``dvc exp run --queue -n NAME [TARGET] -S key=value ...`` for one cell."""
    cmd = ["dvc", "exp", "run", "--queue", "-n", name, *targets]
    for key, value in sets.items():
        cmd += ["-S", f"{key}={value}"]
    return cmd


def parse_sets(items: Iterable[str]) -> dict[str, object]:
    """``["a.b=1", "c=[0,1]"]`` -> ``{"a.b": 1, "c": [0, 1]}`` (values read as YAML, as DVC
    reads ``-S``)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"-S {item!r} is not key=value (e.g. -S train.steps=600)")
        out[key] = yaml.safe_load(value)
    return out
