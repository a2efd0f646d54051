"""pipelines.regime: experiments' per-run metrics become one row per (cell, method)."""

from __future__ import annotations

import pytest

from pipelines.regime import render, runs, summarize


def metrics(method: str, seed: int, loss: float, spike: float, diverged: bool) -> dict:
    return {f"reports/train/{method}-s{seed}.json": {"data": {
                "final_target_loss": loss, "max_spike": spike, "diverged": diverged,
                "final_loss": loss, "lr": 0.003}},
            f"reports/eval/{method}-s{seed}.json": {"data": {
                "heldout_distill_loss": loss, "teacher_mse": loss / 4}}}


def show() -> list[dict]:
    m = {"reports/metrics.json": {"data": {"x": 1}},
         "reports/teacher.json": {"data": {"max_absmax_over_std": 15.3, "max_kurtosis": 134.0}}}
    for seed, (q, f) in enumerate([(0.020, 0.018), (0.022, 0.019), (0.021, 0.0185)]):
        m |= metrics("qat", seed, q, 9.0, seed == 0) | metrics("fraqat-late", seed, f, 2.0, False)
    unfinished = {"name": "w3-lr3e-3", "executor": {"state": "queued"},
                  "revs": [{"data": {"metrics": m}}]}
    return [{"experiments": [{"name": "w4-outliers-lr3e-3", "revs": [{"data": {"metrics": m}}]},
                             unfinished]}]


def test_collect_summarizes_cells() -> None:
    df = runs(show())
    assert len(df) == 6 and set(df["cell"]) == {"w4-outliers-lr3e-3"}
    table = summarize(df).set_index("method")
    assert table.loc["qat", "divergence_rate"] == pytest.approx(1 / 3)
    assert table.loc["qat", "max_spike"] == 9.0
    assert table.loc["fraqat-late", "d_heldout"] == pytest.approx(100 * (0.0555 / 0.063 - 1))
    assert table.loc["fraqat-late", "d_mse"] is None  # train-only cells: no teacher MSE
    assert table.loc["fraqat-late", "outcome"] == "wins"
    assert table.loc["qat", "teacher_absmax_over_std"] == 15.3
    md = render(summarize(df))
    assert "`fraqat-late` in `w4-outliers-lr3e-3`" in md and "| 15.3, 134.0 |" in md


def gpu_json() -> dict:
    """A synthetic ``pipelines.regime_gpu`` result: one cell, 3 seeds, one failed run."""
    runs = [{"cell": "w4-lr1e-2", "method": m, "seed": s, "status": "ok", "teacher": "teacher-0",
             "final_target_loss": loss, "max_spike": spike, "diverged": m == "qat" and s == 0,
             "final_loss": loss, "lr": 0.01}
            for s, (q, f) in enumerate([(0.030, 0.024), (0.032, 0.025), (0.031, 0.0245)])
            for m, loss, spike in (("qat", q, 12.0), ("fraqat-late", f, 1.5))]
    runs.append({"cell": "w4-lr1e-2", "method": "qat-warmup", "seed": 0, "status": "timeout",
                 "teacher": "teacher-0"})
    return {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "started": "2026-11-28",
            "elapsed_s": 431.0, "complete": False, "runs": runs,
            "cells": {"w4-lr1e-2": {"bits": 4, "train.lr": 0.01}},
            "profile": {"data": {"source": "mnist"}, "train": {"steps": 2000},
                        "methods": ["qat", "qat-warmup", "fraqat-late"]},
            "teachers": {"teacher-0": {"cells": ["w4-lr1e-2"], "num_params": 10686736,
                                       "pretrain": {"width": 384, "layers": 4, "steps": 2000},
                                       "outliers": {"fraction": 0.0}, "final_loss": 0.21,
                                       "train_seconds": 60.0, "max_absmax_over_std": 4.1,
                                       "max_kurtosis": 2.5}}}


def test_gpu_section_same_columns_and_paired_intervals() -> None:
    from pipelines.regime import gpu_runs, gpu_section

    df = gpu_runs(gpu_json())
    assert len(df) == 6  # the timed-out run is left out
    assert list(df["method"])[:3] == ["qat"] * 3  # the profile's method order, seeds in turn
    table = summarize(df).set_index("method")
    d = 100 * (0.0245 / 0.031 - 1)
    assert table.loc["fraqat-late", "d_heldout"] == pytest.approx(d)
    lo, hi = table.loc["fraqat-late", "ci_heldout"]
    assert lo < d < hi and hi < 0  # every seed better: the interval excludes 0
    assert table.loc["qat", "divergence_rate"] == pytest.approx(1 / 3)
    md = gpu_section(gpu_json())
    assert md.startswith("## GPU machine") and "NVIDIA H100 80GB HBM3" in md
    assert "6 of 7 runs finished (not complete" in md and "10.7 M parameters" in md
    assert "`fraqat-late` in `w4-lr1e-2`" in md and "| 4.1, 2.5 |" in md
    cpu_header = render(summarize(runs(show()))).split("\n")
    gpu_header = md.split("\n")
    head = next(line for line in cpu_header if line.startswith("| cell"))
    assert head in gpu_header  # the same columns as the CPU table


def test_render_from_csv_with_gpu(tmp_path, monkeypatch) -> None:
    import json

    import pipelines.regime as regime

    monkeypatch.chdir(tmp_path)
    table = summarize(runs(show()))
    regime.OUT.mkdir(parents=True)
    table.assign(ci_heldout=table["ci_heldout"].map(json.dumps),
                 ci_mse=table["ci_mse"].map(json.dumps)).to_csv(regime.OUT / "regime.csv",
                                                                index=False)
    assert regime.main(["render"]) == 0
    assert (regime.OUT / "regime.md").read_text() == render(table)  # CSV round trip
    regime.GPU_JSON.write_text(json.dumps(gpu_json()))
    assert regime.main(["render"]) == 0
    md = (regime.OUT / "regime.md").read_text()
    assert md.startswith(render(table).rstrip("\n")) and "## GPU machine" in md
