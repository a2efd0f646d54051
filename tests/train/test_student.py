"""fraqat.train.student: the controls mirror their fractional method; tuning picks the best lr;
the validation split is disjoint from the calibration images."""

from __future__ import annotations

import math

import pytest

from fraqat.errors import FraqatError
from fraqat.params import parse_params
from fraqat.schedule import first_target_step, make_lr_schedule, steps_at_target
from fraqat.stages.calibrate import split_validation
from fraqat.train.student import build_lr, build_schedule, choose_lr, train_steps, tuned_methods


def lr_trace(params, method: str, lr: float = 1e-3) -> list[float]:
    sched = build_lr(params, method, lr)
    return [sched.lr_at(k) for k in range(train_steps(params, method))]


@pytest.mark.parametrize("shape", ["cosine", "restart", "cosine-per-stage", "constant"])
@pytest.mark.parametrize("source", ["fraqat", "fraqat-late"])
def test_target_steps_control_gets_the_target_stage_lr(shape: str, source: str) -> None:
    p = parse_params({"train": {"steps": 400, "lr_schedule": shape, "warmup_steps": 10},
                      "schedule": {"control_of": source}})
    frac = build_schedule(p, source)
    first = first_target_step(frac)
    assert train_steps(p, "qat-target-steps") == steps_at_target(frac) == 400 - first
    assert lr_trace(p, "qat-target-steps") == lr_trace(p, source)[first:]


def test_late_schedule_and_warmup_control() -> None:
    p = parse_params({"train": {"steps": 400, "lr_schedule": "restart"}})
    late = build_schedule(p, "fraqat-late")
    assert steps_at_target(late) == 280 and first_target_step(late) == 120
    warm = lr_trace(p, "qat-warmup")
    assert warm[:120] == [1e-3 * (k + 1) / 120 for k in range(120)]
    # after its warm-up, the control's lr is fraqat-late's target-stage lr (restart shape)
    assert warm[120:] == pytest.approx(lr_trace(p, "fraqat-late")[120:], rel=1e-12)
    qat = make_lr_schedule("cosine", 1e-3, build_schedule(p, "qat"))
    assert lr_trace(p, "qat") == [qat.lr_at(k) for k in range(400)]


def test_tuned_methods() -> None:
    p = parse_params({"methods": ["ptq", "qat", "fraqat", "qat-target-steps"]})
    assert tuned_methods(p) == ["qat", "fraqat", "fraqat-late"]
    p = parse_params({"methods": ["ptq", "qat"]})
    assert tuned_methods(p) == ["qat"]


def test_choose_lr() -> None:
    assert choose_lr({1e-4: 0.02, 1e-3: 0.01, 3e-3: math.nan}) == 1e-3
    assert choose_lr({1e-4: 0.01, 1e-3: 0.01}) == 1e-4  # a tie goes to the smaller rate
    with pytest.raises(FraqatError, match="diverged"):
        choose_lr({1e-3: math.inf, 1e-2: math.nan})


@pytest.mark.parametrize(("n", "fraction"), [(1437, 0.1), (10, 0.01), (3, 0.99)])
def test_validation_split_is_disjoint(n: int, fraction: float) -> None:
    calib, val = split_validation(n, fraction, seed=0)
    assert set(calib.tolist()).isdisjoint(val.tolist())
    assert sorted(calib.tolist() + val.tolist()) == list(range(n))
    assert len(val) >= 1 and len(calib) >= 1


def test_tune_chooses_on_validation_and_train_uses_it(tmp_path, monkeypatch) -> None:
    from fraqat import paths
    from fraqat.artifacts import load_tuned_lrs
    from fraqat.io import read_json
    from fraqat.params import load_params
    from fraqat.stages import tune
    from fraqat.train.student import peak_lr
    from tests.tiny import make_tiny_project

    overrides = {"methods": ["qat", "qat-target-steps"],
                 "tune": {"lr_grid": [1e-5, 1e-3], "steps": None},
                 "train": {"steps": 12, "batch_size": 8, "probe_every": 6, "probe_samples": 8}}
    monkeypatch.chdir(make_tiny_project(tmp_path, overrides))
    params = load_params("params.yaml")
    tune.run(params)
    out = read_json(paths.TUNE)
    assert set(out["chosen"]) == {"qat", "fraqat-late"}  # the control's source is tuned too
    for method, losses in out["losses"].items():
        best = min(losses, key=losses.get)
        assert out["chosen"][method] == float(best)
    chosen = load_tuned_lrs()
    assert peak_lr(params, "qat-target-steps", chosen) == out["chosen"]["fraqat-late"]
    assert peak_lr(params, "ptq", chosen) == params.train.lr
    with pytest.raises(FraqatError, match="no tuned learning rate for fraqat"):
        peak_lr(params, "fraqat", chosen)
