"""pipelines.experiments.regime: experiments' per-run metrics become one row per (cell, method),
log-ratio effects with Holm across cells, the factorial per cell, and a generated map."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.experiments.regime import read_table, render, runs, summarize, write_table
from pipelines.experiments.regime_map import regime_map

SEEDS = [(0.020, 0.018), (0.022, 0.019), (0.021, 0.0185), (0.0205, 0.0181), (0.0215, 0.0192)]


def metrics(method: str, seed: int, loss: float, spike: float, diverged: bool,
            sep: str = "/") -> dict:
    """One run's metric files: ``<method>/s<seed>.json``, or with ``sep="-"`` the
    ``<method>-s<seed>.json`` of experiments committed before per-method folders."""
    return {f"reports/train/{method}{sep}s{seed}.json": {"data": {
                "final_target_loss": loss, "max_spike": spike, "diverged": diverged,
                "first_update_spike": spike, "stage_start_spike": 1.5, "steady_spike": 1.2,
                "final_loss": loss, "lr": 0.003}},
            f"reports/eval/{method}{sep}s{seed}.json": {"data": {
                "heldout_distill_loss": loss, "teacher_mse": loss / 4}}}


def show() -> list[dict]:
    m = {"reports/metrics.json": {"data": {"x": 1}},
         "reports/teacher.json": {"data": {"max_absmax_over_std": 15.3, "max_kurtosis": 134.0}}}
    for seed, (q, f) in enumerate(SEEDS):
        m |= metrics("qat", seed, q, 9.0, seed == 0) | \
            metrics("fraqat-late", seed, f, 2.0, False, "-")
    unfinished = {"name": "w3-lr3e-3", "executor": {"state": "queued"},
                  "revs": [{"data": {"metrics": m}}]}
    return [{"experiments": [{"name": "w4-outliers-lr3e-3", "revs": [{"data": {"metrics": m}}]},
                             unfinished]}]


def test_collect_summarizes_cells() -> None:
    df = runs(show())
    assert len(df) == 10 and set(df["cell"]) == {"w4-outliers-lr3e-3"}
    table = summarize(df).set_index("method")
    assert table.loc["qat", "divergence_rate"] == pytest.approx(1 / 5)
    assert table.loc["qat", "max_spike"] == 9.0 and table.loc["qat", "steady_spike"] == 1.2
    q, f = (pd.Series([s[i] for s in SEEDS]) for i in (0, 1))
    assert table.loc["fraqat-late", "d_heldout"] == pytest.approx(100 * (f.mean() / q.mean() - 1))
    effect = table.loc["fraqat-late", "effect_heldout"]
    assert effect["ratio"] == pytest.approx(float((f / q).prod() ** (1 / 5)))
    assert table.loc["fraqat-late", "d_mse"] is None  # train-only cells: no teacher MSE
    assert table.loc["fraqat-late", "outcome"] == "wins"
    assert table.loc["qat", "teacher_absmax_over_std"] == 15.3
    md = render(summarize(df))
    assert "`fraqat-late` in `w4-outliers-lr3e-3`" in md and "| 15.3, 134.0 |" in md
    assert "| w4-outliers-lr3e-3 |  | fraqat-late-warmup |  | 0 | not run |" in md


def gpu_json() -> dict:
    """A synthetic ``pipelines.experiments.regime_gpu`` result: 1 cell, 3 seeds, 1 failed run."""
    runs = [{"cell": "w4-lr1e-2", "method": m, "seed": s, "status": "ok", "teacher": "teacher-0",
             "final_target_loss": loss, "max_spike": spike, "max_spike_step": 1,
             "diverged": m == "qat" and s == 0, "final_loss": loss, "lr": 0.01}
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


def test_gpu_cells_with_few_seeds_are_used_by_no_verdict() -> None:
    from pipelines.experiments.regime import gpu_runs, gpu_section

    df = gpu_runs(gpu_json())
    assert len(df) == 6  # the timed-out run is left out
    assert list(df["method"])[:3] == ["qat"] * 3  # the profile's method order, seeds in turn
    table = summarize(df).set_index("method")
    e = table.loc["fraqat-late", "effect_heldout"]
    assert e["ci"][1] < 1  # every seed better: the log-ratio interval excludes 1
    assert table.loc["fraqat-late", "outcome"] == "not used (n < 5)"
    md = gpu_section(gpu_json())
    assert md.startswith("## GPU machine") and "NVIDIA H100 80GB HBM3" in md
    assert "6 of 7 runs finished (not complete" in md and "10.7 M parameters" in md
    assert "(`w4-lr1e-2`) are shown but used by no verdict" in md and "| 4.1, 2.5 |" in md
    cpu_header = render(summarize(runs(show()))).split("\n")
    head = next(line for line in cpu_header if line.startswith("| cell"))
    assert head in md.split("\n")  # the same columns as the CPU table


def test_render_from_csv_with_gpu(tmp_path, monkeypatch) -> None:
    import pipelines.experiments.regime as regime

    monkeypatch.chdir(tmp_path)
    table = summarize(runs(show()))
    regime.OUT.mkdir(parents=True)
    write_table(table, regime.OUT / "regime.csv")
    assert regime.main(["render"]) == 0
    assert (regime.OUT / "regime.md").read_text() == render(table)  # CSV round trip
    regime.GPU_JSON.write_text(json.dumps(gpu_json()))
    assert regime.main(["render"]) == 0
    md = (regime.OUT / "regime.md").read_text()
    assert "## GPU machine" in md
    assert "Not used by any verdict (an arm with fewer than 5 seeds)" in md


def test_a_summary_without_per_seed_values_gets_the_raw_interval(tmp_path) -> None:
    table = summarize(runs(show()))
    old = table.drop(columns=["effect_heldout", "steady_spike"])
    old.assign(ci_heldout=old["ci_heldout"].map(json.dumps),
               ci_mse=old["ci_mse"].map(json.dumps)).to_csv(tmp_path / "r.csv", index=False)
    back = read_table(tmp_path / "r.csv").set_index("method")
    e = back.loc["fraqat-late", "effect_heldout"]
    assert e["raw"] and e["ci_pct"] == pytest.approx(table.set_index("method").loc[
        "fraqat-late", "ci_heldout"])
    assert "†" in render(back.reset_index())


def cell(name: str, values: dict[str, list[float]]) -> list[dict]:
    return [{"cell": name, "method": m, "seed": s, "train.final_target_loss": x,
             "train.max_spike": 30.0 if m == "fraqat-late" else 3.0,
             "train.first_update_spike": 30.0 if m == "fraqat-late" else 3.0,
             "train.stage_start_spike": 2.0, "train.steady_spike": 1.1,
             "train.diverged": False, "train.final_loss": x, "train.lr": 0.003,
             "teacher.max_absmax_over_std": 4.0, "teacher.max_kurtosis": 3.0}
            for m, xs in values.items() for s, x in enumerate(xs)]


def test_regime_map_counts_outcomes_and_reads_the_factorial() -> None:
    q = [1.0, 1.1, 1.05, 1.02, 1.08]
    w4 = {"qat": q, "qat-warmup": [x * r for x, r in zip(q, (0.50, 0.52, 0.49, 0.51, 0.50),
                                                         strict=True)],
          "fraqat-late": [x * r for x, r in zip(q, (0.80, 0.81, 0.79, 0.80, 0.82), strict=True)],
          "fraqat-late-warmup": [x * r for x, r in zip(q, (0.51, 0.50, 0.49, 0.52, 0.50),
                                                       strict=True)]}
    out = {"qat": [2.0, 2.2, 2.1, 2.05, 2.15], "qat-warmup": [2.0, 2.2, 2.1, 2.05, 2.15],
           "fraqat-late": [2.0, 2.21, 2.1, 2.06, 2.15]}
    w3 = {"qat": [1.0] * 5, "qat-warmup": [1.0] * 5, "fraqat-late": [1.5, 0.6, 1.2, 1.1, 1.1]}
    df = pd.DataFrame(cell("w4", w4) + cell("w4-outliers", out) + cell("w3", w3))
    md = regime_map({"CPU": (summarize(df), df)}, cpu_params_m=0.19)
    assert md.startswith("## Regime map")
    assert ("On a 0.19 M-parameter teacher on 8×8 digits, `fraqat-late` vs `qat` at the same "
            "learning rate (held-out loss, 3 cells with ≥ 5 seeds, Holm across them): wins in "
            "1 (`w4`); ties in 1 (`w4-outliers`); unresolved in 1 (`w3`).") in md
    assert "the fractional-bits effect at equal warm-up is ×" in md
    assert "(lower: estimate ≥ 4 %, interval excludes 0)" in md
    assert "`fraqat-late-warmup` in 2 of 3 cells" in md
    assert "above `qat`'s in 3 of 3 cells" in md and "30×→1×" in md
    assert "`w4-outliers` (CPU): qat ×2.0" in md and "has not been run" in md
    key = "fair.{}.fraqat-late_vs_qat.{}"
    fair = {key.format(k, "delta_pct"): -5.0 for k in ("heldout_loss", "teacher_mse")}
    assert "predate the log-ratio statistics" in regime_map({"CPU": (summarize(df), df)},
                                                            fair=fair)
    for k in ("heldout_loss", "teacher_mse"):
        fair |= {key.format(k, "ratio_pct"): -5.0, key.format(k, "ci_low_pct"): -7.0,
                 key.format(k, "ci_high_pct"): -3.0, key.format(k, "p_holm"): 0.01}
    assert "`fraqat-late` beat tuned QAT by ≥ 4 % on both" in regime_map(
        {"CPU": (summarize(df), df)}, fair=fair)
    fair[key.format("teacher_mse", "p_holm")] = 0.2
    assert "no fractional schedule (`fraqat-late`) beats" in regime_map(
        {"CPU": (summarize(df), df)}, fair=fair)


def test_a_cell_is_used_only_where_every_arm_has_five_seeds() -> None:
    """qat at 5 seeds, the other arms at 4: the map shows the range and no verdict uses it;
    a fractional arm with warm-up that wins is read against its warm-up control."""
    q = [1.0, 1.1, 1.05, 1.02, 1.08]
    short = {"qat": q, "qat-warmup": [x * 0.5 for x in q[:4]],
             "fraqat-late": [x * 0.8 for x in q[:4]]}
    w4 = {"qat": q, "qat-warmup": [x * r for x, r in zip(q, (0.50, 0.52, 0.49, 0.51, 0.50),
                                                         strict=True)],
          "fraqat-late": [x * r for x, r in zip(q, (1.0, 1.01, 0.99, 1.0, 1.02), strict=True)],
          "fraqat-late-warmup": [x * r for x, r in zip(q, (0.51, 0.50, 0.49, 0.52, 0.50),
                                                       strict=True)]}
    df = pd.DataFrame(cell("w3", short) + cell("w4", w4))
    md = regime_map({"CPU": (summarize(df), df)}, cpu_params_m=0.19)
    assert "| CPU | w3 | 4–5 |" in md
    assert "Not used by any verdict (an arm with fewer than 5 seeds): `w3` (CPU)" in md
    assert "`w4` (CPU): `fraqat-late-warmup` ×" in md and "and `qat-warmup` ×" in md


def test_each_finding_names_the_teachers_its_own_cells_used() -> None:
    """A GPU cell where only `qat-warmup` has 5 seeds widens that finding's scope, not the
    `fraqat-late` one's."""
    from pipelines.experiments.regime_map import scope

    q = [1.0, 1.1, 1.05, 1.02, 1.08]
    cpu = pd.DataFrame(cell("w4", {"qat": q, "fraqat-late": q, "qat-warmup": q}))
    gpu = pd.DataFrame(cell("w4", {"qat": q, "qat-warmup": q, "fraqat-late": q[:4]}))
    machines = {"CPU": (summarize(cpu), cpu), "GPU": (summarize(gpu), gpu)}
    teachers = {"gpu": {"teachers": {"t": {"num_params": 10.7e6}},
                        "profile": {"data": {"source": "mnist"}}}}
    assert scope(machines, teachers["gpu"], 0.19, method="fraqat-late") == \
        "a 0.19 M-parameter teacher on 8×8 digits"
    assert scope(machines, teachers["gpu"], 0.19, method="qat-warmup") == \
        "teachers of 0.19–10.7 M parameters on 8×8 digits / 28×28 digits"
    teachers["gpu"]["teachers"] = {"t": {"num_params": 10.7e6, "cells": ["w4"]},  # no finished
                                   "big": {"num_params": 51.5e6, "cells": ["w4-large"]}}  # run
    assert scope(machines, teachers["gpu"], 0.19, method="qat-warmup") == \
        "teachers of 0.19–10.7 M parameters on 8×8 digits / 28×28 digits"
    assert "51.5" in scope(machines, teachers["gpu"], 0.19, used_only=False)
