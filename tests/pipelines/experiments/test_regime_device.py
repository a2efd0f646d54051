"""pipelines.experiments.regime_device: the CPU cells (DVC experiments' params) and the GPU
cells in one call, and its CPU half as reports/regime's per-seed CPU files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fraqat.params import Params
from pipelines.experiments import regime, regime_device
from pipelines.experiments.regime_device import CPU_CELLS, cpu_cell, cpu_profile, ingest, main


def test_cpu_cells_are_the_dvc_cells_with_the_fixed_rate_as_train_lr() -> None:
    assert set(CPU_CELLS) == set(regime.CELLS)
    assert cpu_cell({"bits": 3, "tune.lr_grid": "[0.003]", "act_bits": "6"}) == {
        "bits": 3, "act_bits": 6, "train.lr": 0.003, "tune.lr_grid": []}
    assert CPU_CELLS["w4-lr1e-2"]["train.lr"] == 0.01
    with pytest.raises(ValueError, match="one fixed rate"):
        cpu_cell({"tune.lr_grid": "[0.001, 0.003]"})
    profile = cpu_profile([0, 1, 2, 3, 4])
    assert profile["methods"] == list(regime.ARMS) and profile["device"] == "cpu"
    Params.model_validate(regime_device.with_overrides(profile, CPU_CELLS["w4a6-outliers-lr3e-3"]))


RATIO = [1.08, 1.12, 1.1, 1.09, 1.11]


def _cpu_json(cell: str = "w4-lr3e-3") -> dict:
    runs = [{"cell": cell, "method": m, "seed": s, "status": "ok", "teacher": "teacher-0",
             "final_target_loss": 0.02 * (1 + 0.01 * s) * (RATIO[s] if m == "fraqat-late" else 1),
             "max_spike": 2.0, "first_update_spike": 2.0, "stage_start_spike": 1.5,
             "steady_spike": 1.1, "max_spike_step": 1, "diverged": False, "final_loss": 0.02,
             "lr": 0.003}
            for cell in (cell, "check-default-qat") for m in regime.ARMS
            for s in range(5)]
    return {"device": "cpu (16 cores, Test CPU)", "torch": "2.x", "started": "t", "jobs": 12,
            "cells": {}, "cell_order": [cell], "profile": {"methods": list(regime.ARMS)},
            "teachers": {"teacher-0": {"max_absmax_over_std": 4.6, "max_kurtosis": 3.0}},
            "runs": runs}


def test_ingest_writes_per_seed_cpu_files_and_names_the_machine(tmp_path: Path) -> None:
    src = tmp_path / "cpu.json"
    src.write_text(json.dumps(_cpu_json()))
    df = ingest(src, tmp_path / "regime")
    assert set(df["cell"]) == {"w4-lr3e-3"} and len(df) == 20  # the check cell stays out
    table = regime.read_table(tmp_path / "regime" / "regime.csv").set_index("method")
    effect = table.loc["fraqat-late", "effect_heldout"]
    geo = 1.0
    for r in RATIO:
        geo *= r ** (1 / 5)
    assert effect["ratio"] == pytest.approx(geo) and "raw" not in effect  # exact, per seed
    md = regime.render(table.reset_index(), None, df, _cpu_json())
    assert "Test CPU" in md and "regime_device" in md
    src.write_text(json.dumps(_cpu_json("w3-lr3e-3")))  # a second call's cell joins the first
    df = ingest(src, tmp_path / "regime")
    table = regime.read_table(tmp_path / "regime" / "regime.csv")
    assert list(table["cell"].unique()) == ["w4-lr3e-3", "w3-lr3e-3"] and len(df) == 40


@pytest.mark.slow
def test_tiny_call_runs_both_halves_on_the_cpu(tmp_path: Path) -> None:
    """Both runners at once, tiny sizes: a CPU cell and a GPU cell (its runner on the CPU)."""
    out = tmp_path / "out"
    assert main(["--tiny", "--out-dir", str(out), "--cpu-cells", "w4-lr3e-3",
                 "--gpu-cells", "w4-lr3e-3", "--seeds", "0", "--cpu-jobs", "2",
                 "--gpu-jobs", "1", "--budget-s", "600", "--work", str(tmp_path / "w")]) == 0
    cpu, gpu = (json.loads((out / f"{h}.json").read_text()) for h in ("cpu", "gpu"))
    assert cpu["complete"] and gpu["complete"]
    assert {(r["method"], r["lr"]) for r in cpu["runs"]} == {("qat", 0.003),
                                                             ("fraqat-late", 0.003)}
    assert cpu["profile"]["data"]["source"] == "digits"
    assert gpu["profile"]["data"]["source"] == "mnist"
