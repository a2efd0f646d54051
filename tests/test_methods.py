"""fraqat.methods: every recipe builds a schedule, a budget and a learning-rate curve; the lists
other modules show are the registry's; the factorial arm's lr curve is qat-warmup's."""

from __future__ import annotations

import pytest

from fraqat import methods
from fraqat.params import METHODS, TRAINED_METHODS, ExportParams, parse_params
from fraqat.report import fair
from fraqat.schedule import first_target_step, steps_at_target
from fraqat.train.student import build_lr, build_schedule, train_steps, tuned_methods

RUNS = [m for m in methods.REGISTRY.values() if m.has_run]


def lr_trace(params, method: str, lr: float = 1e-3) -> list[float]:
    sched = build_lr(params, method, lr)
    return [sched.lr_at(k) for k in range(train_steps(params, method))]


@pytest.mark.parametrize("recipe", RUNS, ids=lambda m: m.name)
def test_every_recipe_builds_its_schedule_budget_and_lr(recipe: methods.Method) -> None:
    p = parse_params({"train": {"steps": 200}})
    sched = build_schedule(p, recipe.name)
    assert sched.target == p.bits and sched.total_steps == train_steps(p, recipe.name)
    source = build_schedule(p, p.schedule.control_of)
    want = steps_at_target(source) if recipe.steps == "mirrored-target" else 200
    assert train_steps(p, recipe.name) == want
    trace = lr_trace(p, recipe.name)
    assert len(trace) == want and all(0 < v <= 1e-3 for v in trace)
    constant = recipe.schedule == "constant"
    assert (sched.bits_at(0) == p.bits) == constant
    if recipe.warmup != "none":  # a linear ramp over the high-bit steps it counts
        n = first_target_step(source if recipe.warmup == "mirrored-high-bits" else sched)
        assert n > 0 and trace[:n] == [1e-3 * (k + 1) / n for k in range(n)]


@pytest.mark.parametrize("shape", ["restart", "cosine", "cosine-per-stage", "constant"])
@pytest.mark.parametrize("warmup_steps", [0, 7])
def test_fraqat_late_warmup_has_qat_warmups_lr_curve_step_by_step(shape: str,
                                                                  warmup_steps: int) -> None:
    p = parse_params({"train": {"steps": 400, "lr_schedule": shape,
                                "warmup_steps": warmup_steps}})
    arm, control = lr_trace(p, "fraqat-late-warmup"), lr_trace(p, "qat-warmup")
    assert len(arm) == len(control) == 400
    for k, (a, c) in enumerate(zip(arm, control, strict=True)):
        assert a == c, f"step {k}: {a} != {c}"
    # and its bits are fraqat-late's
    late, mine = build_schedule(p, "fraqat-late"), build_schedule(p, "fraqat-late-warmup")
    assert [mine.bits_at(k) for k in range(400)] == [late.bits_at(k) for k in range(400)]
    if warmup_steps == 0:  # without the arm's warm-up fraqat-late starts at the peak
        assert lr_trace(p, "fraqat-late")[0] == 1e-3 != arm[0]


def test_tuned_methods_follow_the_lr_rule() -> None:
    p = parse_params({"methods": ["ptq", "qat-warmup", "fraqat-late-warmup",
                                  "qat-target-steps"], "schedule": {"control_of": "fraqat"}})
    assert tuned_methods(p) == ["qat-warmup", "fraqat-late-warmup", "fraqat"]


def test_the_lists_derive_from_the_registry() -> None:
    assert METHODS == tuple(methods.REGISTRY) and METHODS[0] == "fp"
    assert TRAINED_METHODS == tuple(m.name for m in RUNS)
    assert fair.FRACTIONAL == ("fraqat", "fraqat-late", "int-progressive",
                               "fraqat-late-warmup")
    assert fair.CONTROLS == ("qat-warmup", "qat-target-steps") and fair.BASELINE == "qat"
    assert ExportParams(method="fraqat-late").method == "fraqat-late"
    p = parse_params({"methods": ["qat", "fraqat-late-warmup"]})
    assert p.methods == ["qat", "fraqat-late-warmup"]


def test_cli_help_lists_every_method() -> None:
    from typer.testing import CliRunner

    from fraqat.cli import app

    out = CliRunner().invoke(app, ["train", "--help"], terminal_width=400).output
    assert all(name in out for name in TRAINED_METHODS)


def test_unknown_method_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"'sgd' is not known \(allowed: fp, ptq"):
        methods.get("sgd")
