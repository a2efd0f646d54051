"""pipelines.experiments.grid: one override function for every driver, the queued command, the
shared constants."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraqat.params import load_params, parse_params
from fraqat.report import fair
from pipelines.experiments import ablation, regime, regime_gpu
from pipelines.experiments.grid import (
    OUTLIERS,
    SENSITIVE,
    WIN_PCT,
    exp_run_command,
    parse_sets,
    with_overrides,
)

ROOT = Path(__file__).resolve().parents[3]


def test_with_overrides_sets_dotted_keys_on_a_copy() -> None:
    base = {"bits": 4, "train": {"steps": 400, "lr": 1e-4}}
    out = with_overrides(base, {"bits": 3, "train.steps": 10, "outliers.fraction": 0.5})
    assert out == {"bits": 3, "train": {"steps": 10, "lr": 1e-4}, "outliers": {"fraction": 0.5}}
    assert base == {"bits": 4, "train": {"steps": 400, "lr": 1e-4}}


def test_every_driver_uses_the_one_function_and_constants() -> None:
    assert regime_gpu.with_overrides is with_overrides
    assert regime.OUTLIERS is OUTLIERS is regime_gpu.OUTLIERS
    assert WIN_PCT == fair.WIN_PCT and list(SENSITIVE.values()) == list(fair.SENSITIVE.values())
    p = load_params(ROOT / "params.yaml", {"bits": 3, **OUTLIERS})
    assert p.bits == 3 and p.outliers.factor == 50.0


def test_a_cell_validates_and_queues_as_dvc_reads_it() -> None:
    cell = {**regime.BASE, "seeds": "[0,1]", **regime.CELLS["w3-outliers-lr3e-3"]}
    cmd = exp_run_command("w3-outliers-lr3e-3", cell, ["train"])
    assert cmd[:7] == ["dvc", "exp", "run", "--queue", "-n", "w3-outliers-lr3e-3", "train"]
    sets = parse_sets(cmd[i + 1] for i, a in enumerate(cmd) if a == "-S")
    assert sets["outliers.fraction"] == 0.015 and sets["seeds"] == [0, 1]
    for grid in ablation.GRIDS.values():
        for overrides in grid.values():
            raw = with_overrides({}, parse_sets(f"{k}={v}" for k, v in
                                                {**ablation.BASE, **overrides}.items()))
            parse_params(raw)
    with pytest.raises(ValueError, match="is not key=value"):
        parse_sets(["train.steps"])
