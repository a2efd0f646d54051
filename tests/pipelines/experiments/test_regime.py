"""pipelines.experiments.regime: experiments' per-run metrics become one row per (cell, method)."""

from __future__ import annotations

import pytest

from pipelines.experiments.regime import render, runs, summarize


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
    """A synthetic ``pipelines.experiments.regime_gpu`` result: 1 cell, 3 seeds, 1 failed run."""
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
    from pipelines.experiments.regime import gpu_runs, gpu_section

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

    import pipelines.experiments.regime as regime

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


def test_regime_map_counts_outcomes_and_names_the_warmup() -> None:
    import pandas as pd

    from pipelines.experiments.regime import regime_map

    def cell(name: str, q: list[float], w: list[float], f: list[float]) -> list[dict]:
        return [{"cell": name, "method": m, "seed": s, "train.final_target_loss": x,
                 "train.max_spike": 30.0 if m == "fraqat-late" else 3.0,
                 "train.diverged": False, "train.final_loss": x, "train.lr": 0.003,
                 "teacher.max_absmax_over_std": 4.0, "teacher.max_kurtosis": 3.0}
                for m, xs in (("qat", q), ("qat-warmup", w), ("fraqat-late", f))
                for s, x in enumerate(xs)]

    df = pd.DataFrame(cell("w4", [1.0, 1.1, 1.05], [0.5, 0.52, 0.51], [0.8, 0.82, 0.81])
                      + cell("w4-outliers", [2.0, 2.2, 2.1], [2.0, 2.2, 2.1],
                             [2.0, 2.25, 2.1])
                      + cell("w3", [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.5, 0.6, 1.2]))
    md = regime_map({"CPU": summarize(df)})
    assert md.startswith("## Regime map")
    assert "3 cells: wins in 1, ties in 1, loses in 0" in md  # w3: +10 % but n.s.
    assert "confirm in 1." in md and "loses (n.s.)" in md
    assert "better still in 1 of 1" in md  # the warm-up beats fraqat-late where it wins
    assert "above standard QAT's in 3 of 3 cells" in md
    assert "`w4-outliers` (CPU): qat ×2.0" in md
    assert "has not been run" in md
    fair = {f"fair.{k}.fraqat-late_vs_qat.delta_pct": v
            for k, v in (("heldout_loss", -5.0), ("teacher_mse", -4.5))}
    assert "`fraqat-late` beat tuned QAT by ≥ 4 % on both" in regime_map(
        {"CPU": summarize(df)}, fair=fair)
    fair["fair.teacher_mse.fraqat-late_vs_qat.delta_pct"] = -3.0
    assert "no fractional schedule (`fraqat-late`) beats" in regime_map(
        {"CPU": summarize(df)}, fair=fair)
