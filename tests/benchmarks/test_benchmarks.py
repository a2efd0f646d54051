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
