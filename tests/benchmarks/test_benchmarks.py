"""The GPU benchmarks import from the repository root and run their CPU smoke sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import fake_quant


def test_fake_quant_benchmark_runs_from_the_root(tmp_path: Path) -> None:
    out = tmp_path / "fq.json"
    assert fake_quant.main(["--device", "cpu", "--size", "32", "--repeats", "1", "--reps", "1",
                            "--dtypes", "float32", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    ours = [r for r in res["rows"] if r["path"] in ("triton", "reference")]
    assert len(ours) == 6 and all(r["exact"] == "yes" for r in ours)
    assert res["meta"]["device"] == "cpu" and res["host_overhead"]


@pytest.mark.slow
def test_pipeline_stages_tiny_measures_every_stage(tmp_path: Path) -> None:
    from benchmarks import pipeline_stages

    assert pipeline_stages.main(["--tiny", "--json", str(tmp_path),
                                 "--workdir", str(tmp_path / "work")]) == 0
    out = tmp_path / "pipeline-stages-sana-600m-cpu.json"  # named after the device
    res = json.loads(out.read_text())
    names = [s["stage"] for s in res["stages"]]
    assert names == ["build (random init)", "save_pretrained", "prepare", "pretrain",
                     "calibrate", "teacher", "tune", "train ptq", "train qat", "train fraqat",
                     "classifier", "evaluate fp", "evaluate ptq", "evaluate qat",
                     "evaluate fraqat", "report"]
    stage = {s["stage"]: s for s in res["stages"]}
    assert stage["save_pretrained"]["output_bytes"] == res["run"]["checkpoint_bytes"] > 0
    for name in ("calibrate", "teacher", "train qat", "evaluate fp", "report"):
        assert stage[name]["output_bytes"] > 0 and stage[name]["wall_s"] > 0, name
    assert res["meta"]["device"] == "cpu" and res["meta"]["tiny"] is True and res["complete"]
    assert stage["train qat"]["peak_allocated_gib"] is None  # no CUDA: no memory claimed
    assert res["run"]["train_steps"] == {"ptq": 0, "qat": 6, "fraqat": 6}
    models = [m["model"] for m in res["needs"]["models"]]
    assert models == ["Sana-600M", "Sana-1.6B", "PixArt-Σ", "SD3.5-Medium", "FLUX.1-schnell"]


def test_pipeline_stages_keeps_the_rows_of_a_run_that_stops(tmp_path: Path, monkeypatch) -> None:
    from benchmarks import pipeline_stages

    def boom() -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(pipeline_stages, "stage_calls",
                        lambda params: [("prepare", lambda: None), ("calibrate", boom)])
    with pytest.raises(RuntimeError, match="out of memory"):
        pipeline_stages.main(["--tiny", "--json", str(tmp_path), "--workdir",
                              str(tmp_path / "work")])
    res = json.loads((tmp_path / "pipeline-stages-sana-600m-cpu.json").read_text())
    assert res["complete"] is False and "needs" not in res
    assert [s["stage"] for s in res["stages"]] == ["build (random init)", "save_pretrained",
                                                   "prepare"]


@pytest.mark.slow
def test_train_step_tiny_times_every_run_interleaved(tmp_path: Path) -> None:
    from benchmarks import train_step

    out = tmp_path / "ts.json"
    assert train_step.main(["--tiny", "--runs", "fp:eager,w4a8:eager,fp:graph", "--rounds",
                            "2", "--steps", "1", "--warmup", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {f"{r['variant']}:{r['mode']}": r for r in res["rows"]}
    assert rows["fp:graph"]["skipped"] == "needs CUDA"
    for name in ("fp:eager", "w4a8:eager"):
        assert len(rows[name]["repeat_medians"]) == 2 and rows[name]["samples"] == 2
        assert rows[name]["fastest_fp"] == "fp:eager"
    assert rows["fp:eager"]["x_fastest_fp"] == 1.0
    assert rows["w4a8:eager"]["x_fastest_fp"] == pytest.approx(
        rows["w4a8:eager"]["median"] / rows["fp:eager"]["median"])


def test_train_step_refuses_an_unknown_run() -> None:
    from benchmarks import train_step

    with pytest.raises(SystemExit) as exc:
        train_step.main(["--tiny", "--runs", "fp:warp"])
    assert exc.value.code == 2


def test_ratios_are_against_the_fastest_fp_run() -> None:
    from benchmarks.train_step import add_ratios

    rows = [{"variant": "fp", "mode": "eager", "median": 200.0, "peak_gib": 10.0},
            {"variant": "fp", "mode": "compile", "median": 100.0, "peak_gib": 8.0},
            {"variant": "w4a8", "mode": "eager", "median": 300.0, "peak_gib": 12.0},
            {"variant": "w4a8", "mode": "graph", "median": 110.0, "peak_gib": 12.0}]
    add_ratios(rows)
    assert [r["x_fastest_fp"] for r in rows] == [2.0, 1.0, 3.0, 1.1]
    assert rows[2]["x_fp"] == 1.5 and "x_fp" not in rows[3]  # no FP graph run
    assert rows[2]["x_fastest_fp_mem"] == 1.5


def test_interleaved_rounds_rotate_the_order() -> None:
    from benchmarks.timing import interleaved

    calls: list[str] = []

    def timer(fn, warmup: int, reps: int) -> list[float]:
        fn()
        return [float(len(calls))] * reps

    times = interleaved({n: (lambda n=n: calls.append(n)) for n in "abc"}, rounds=3, reps=2,
                        timer=timer)
    assert calls == list("abcbcacab")
    assert [len(r) for r in times["a"]] == [2, 2, 2]


@pytest.mark.slow
def test_converted_inference_tiny_equals_fake_quant_and_is_smaller(tmp_path: Path) -> None:
    from benchmarks import converted_inference

    out = tmp_path / "ci.json"
    assert converted_inference.main(["--tiny", "--rounds", "1", "--reps", "1", "--torchao", "",
                                     "--compile", "", "--json", str(out)]) == 0
    rows = {r["model"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["fraqat-w4a8"]["rel_l2_vs_fake_quant"] == 0.0  # the CPU: the same arithmetic
    assert rows["fraqat-w4a8"]["disk_bytes"] < rows["bf16"]["disk_bytes"]
    assert rows["fraqat-w4a8"]["samples"] == 1 and "x_bf16" in rows["fraqat-w4a8"]


@pytest.mark.slow
def test_pipeline_call_times_every_transformer_through_the_same_pipeline(tmp_path: Path) -> None:
    from benchmarks import pipeline_call

    out = tmp_path / "pc.json"
    assert pipeline_call.main(["--tiny", "--steps", "2", "--rounds", "2", "--torchao", "",
                               "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"bf16", "fraqat-w4a8"} and result["resolution"] == 64
    assert rows["fraqat-w4a8"]["samples"] == 2 and rows["bf16"]["x_bf16"] == 1.0
    assert rows["fraqat-w4a8"]["rel_l2_vs_fake_quant"] == 0.0


def test_paired_ratios_are_taken_round_by_round() -> None:
    from benchmarks.train_step import add_ratios

    rows = [{"variant": "fp", "mode": "graph", "median": 100.0, "peak_gib": 8.0,
             "repeat_medians": [100.0, 200.0, 100.0, 100.0]},
            {"variant": "w4a8", "mode": "graph", "median": 150.0, "peak_gib": 8.0,
             "repeat_medians": [110.0, 210.0, 100.0, 90.0]}]
    add_ratios(rows)
    assert rows[1]["x_fastest_fp_rounds"] == [1.1, 1.05, 1.0, 0.9]
    assert rows[1]["x_rounds_median"] == pytest.approx(1.025)
    assert (rows[1]["x_rounds_lo"], rows[1]["x_rounds_hi"]) == (0.9, 1.1)
    assert rows[1]["x_rounds_iqr"] == pytest.approx((0.975, 1.0625))


def test_interleaved_stops_when_told() -> None:
    from benchmarks.timing import interleaved

    seen: list[int] = []

    def on_round(times: dict[str, list[list[float]]]) -> bool:
        seen.append(len(times["a"]))
        return len(seen) < 2

    times = interleaved({"a": lambda: None, "b": lambda: None}, rounds=5, reps=1,
                        timer=lambda fn, warmup, reps: [1.0] * reps, on_round=on_round)
    assert seen == [1, 2] and len(times["b"]) == 2
