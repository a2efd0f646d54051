"""pipelines.experiments.regime_gpu: cells through the stages as subprocesses, in a budget."""

from __future__ import annotations

import json
from pathlib import Path

from fraqat import profiles
from pipelines.experiments.regime_gpu import (
    CELLS,
    PROFILE,
    TINY,
    Runner,
    main,
    teacher_key,
    with_overrides,
)


def test_cells_share_a_teacher_only_when_its_inputs_agree() -> None:
    profile = profiles.merged(PROFILE)
    params = {c: with_overrides(profile, o) for c, o in CELLS.items()}
    assert params["w4-lr1e-2"]["train"]["lr"] == 0.01 and profile["train"]["lr"] == 0.003
    assert teacher_key(params["w4-lr3e-3"]) == teacher_key(params["w4-lr1e-2"])
    assert teacher_key(params["w4-lr3e-3"]) != teacher_key(params["w3-outliers-lr3e-3"])
    assert profile["data"]["source"] == "mnist" and profile["train"]["steps"] == 2000


def test_budget_spent_skips_and_keeps_the_json(tmp_path: Path) -> None:
    profile = with_overrides(profiles.merged(PROFILE), TINY)
    (tmp_path / "logs").mkdir()
    out = tmp_path / "gpu.json"
    result = Runner(profile, {"w4-lr3e-3": CELLS["w4-lr3e-3"]}, tmp_path, out, 0.0, 1).run()
    assert result["stages"][0]["status"] == "skipped" and result["runs"] == []
    assert json.loads(out.read_text())["complete"] is False


def test_tiny_run_through_the_stages(tmp_path: Path) -> None:
    """The GPU command's code path on the CPU: the outlier cell's chain and its train runs."""
    out = tmp_path / "gpu.json"
    assert main(["--tiny", "--cells", "w3-outliers-lr3e-3", "--jobs", "2", "--out", str(out),
                 "--work", str(tmp_path / "work"), "--methods", "qat", "fraqat-late"]) == 0
    result = json.loads(out.read_text())
    assert result["complete"] and result["device"].startswith("cpu")
    assert [s["status"] for s in result["stages"][:4]] == ["ok"] * 4
    teacher = result["teachers"]["teacher-0"]
    assert teacher["outlier_fraction"] == 0.015 and teacher["max_kurtosis"] > 30
    assert teacher["data"]["source"] == "mnist" and teacher["num_params"] > 0
    runs = {(r["method"], r["seed"]): r for r in result["runs"]}
    assert set(runs) == {("qat", 0), ("fraqat-late", 0)}
    for r in runs.values():
        assert r["status"] == "ok" and r["lr"] == 0.003 and r["steps"] == TINY["train.steps"]
        assert r["final_target_loss"] > 0 and r["max_spike"] >= 1.0

    again = tmp_path / "again.json"  # a second call in the same --work keeps the teacher chain
    assert main(["--tiny", "--cells", "w3-outliers-lr3e-3", "--jobs", "2", "--out", str(again),
                 "--work", str(tmp_path / "work"), "--methods", "qat", "--seeds", "1"]) == 0
    second = json.loads(again.read_text())
    assert second["complete"] and second["stages"][0]["label"].endswith("qat-s1")
    assert second["teachers"]["teacher-0"]["final_loss"] == teacher["final_loss"]


def test_a_failing_stage_is_recorded_with_its_log(tmp_path: Path) -> None:
    profile = with_overrides(profiles.merged(PROFILE), {**TINY, "data.source": "cifar"})
    (tmp_path / "logs").mkdir()
    out = tmp_path / "gpu.json"
    result = Runner(profile, {"w4-lr3e-3": CELLS["w4-lr3e-3"]}, tmp_path, out, 60.0, 1).run()
    stage = result["stages"][0]
    assert stage["status"] == "failed" and len(result["stages"]) == 1  # the chain stops
    assert any("data.source: 'cifar'" in line for line in stage["log_tail"])
    assert result["runs"] == [] and json.loads(out.read_text())["complete"] is False


def _call(runs: list[tuple[str, int, str, float]], teacher_loss: float = 0.1) -> dict:
    return {"teachers": {"teacher-0": {"final_loss": teacher_loss}}, "started": "t",
            "elapsed_s": 10.0, "jobs": 2, "budget_s": 20.0,
            "runs": [{"cell": "w4-lr3e-3", "method": m, "seed": s, "status": st,
                      "final_target_loss": loss} for m, s, st, loss in runs]}


def test_merge_joins_calls_and_refuses_disagreeing_ones() -> None:
    import pytest

    from pipelines.experiments.regime_gpu import merge

    a = _call([("qat", 0, "ok", 0.5), ("qat", 1, "skipped", float("nan"))])
    b = _call([("qat", 1, "ok", 0.4), ("qat", 0, "ok", 0.5)])
    out = merge([a, b])
    assert [(r["seed"], r["status"]) for r in out["runs"]] == [(0, "ok"), (1, "ok")]
    assert out["complete"] and out["elapsed_s"] == 20.0 and len(out["calls"]) == 2
    with pytest.raises(ValueError, match="finished twice"):
        merge([a, _call([("qat", 0, "ok", 0.6)])])
    with pytest.raises(ValueError, match="teacher 'teacher-0' differs"):
        merge([a, _call([], teacher_loss=0.2)])
