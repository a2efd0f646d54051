"""A stage's runs in forked workers: same numbers as one after another, failures kept apart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fraqat import jobs, paths
from fraqat.errors import BadFileError, FraqatError
from fraqat.eval.classifier import DigitClassifier, save_classifier
from fraqat.params import parse_params
from tests.tiny import TINY_PARAMS, make_tiny_project

FRAQAT = [sys.executable, "-m", "fraqat.cli"]
WALL_TIME = {"wall_seconds", "seconds"}


def test_run_all_maps_an_unpicklable_function_in_item_order():
    offset = 10
    assert jobs.run_all(lambda x: x * x + offset, [3, 1, 2], workers=2) == [19, 11, 14]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_run_raises_its_error_after_the_others_finished(tmp_path, workers):
    def run(i: int) -> int:
        if i == 1:
            raise BadFileError(f"run {i}: bad input; rebuild it")
        (tmp_path / f"done-{i}").write_text("ok")
        return i

    with pytest.raises(BadFileError, match=r"^run 1: bad input; rebuild it$"):
        jobs.run_all(run, [0, 1, 2, 3], workers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done-0", "done-2", "done-3"]


def test_workers_one_per_core_or_as_set_and_one_where_runs_share_a_device(monkeypatch):
    monkeypatch.delenv(jobs.JOBS_ENV, raising=False)
    cpu = parse_params({})
    assert jobs.workers_for(cpu, 99) == jobs.cores()
    assert jobs.workers_for(cpu, 1) == 1
    monkeypatch.setenv(jobs.JOBS_ENV, "3")
    assert jobs.workers_for(cpu, 5) == 3
    assert jobs.workers_for(parse_params({"train": {"processes": 2}}), 5) == 1
    assert jobs.workers_for(parse_params({"model": "sana-600m", "model_path": "x"}), 5) == 1
    monkeypatch.setattr("fraqat.train.distributed.resolve_device",
                        lambda name: __import__("torch").device("cuda", 0))
    assert jobs.workers_for(parse_params({"device": "auto"}), 5) == 1


def results(root: Path) -> dict[str, object]:
    """Every JSON the stages wrote, less wall times, and every training log."""
    out: dict[str, object] = {}
    for p in sorted((root / paths.REPORTS).rglob("*")):
        if p.suffix == ".json":
            out[str(p.relative_to(root))] = {k: v for k, v in json.loads(p.read_text()).items()
                                             if k not in WALL_TIME}
        elif p.suffix == ".tsv":
            out[str(p.relative_to(root))] = p.read_text()
    return out


@pytest.mark.slow
def test_pooled_stages_give_the_numbers_of_one_run_at_a_time(tmp_path):
    """tune's grid, train's and evaluate's seeds with 2 workers vs ``FRAQAT_JOBS=1``: equal
    metrics, bit for bit (every run is single-threaded and seeded)."""
    (tmp_path / "base").mkdir()
    base = make_tiny_project(tmp_path / "base", {
        "methods": ["qat"], "seeds": [0, 1],
        "tune": {"lr_grid": [1e-4, 1e-3], "steps": 8},
        "train": {**TINY_PARAMS["train"], "steps": 16}})
    save_classifier(base / paths.CLASSIFIER, DigitClassifier(), {})  # untrained: same for both
    fp = subprocess.run(FRAQAT + ["evaluate", "--method", "fp", "--seed", "0"], cwd=base,
                        capture_output=True, text=True)
    assert fp.returncode == 0, fp.stderr
    got = {}
    for workers in ("2", "1"):
        root = tmp_path / f"jobs{workers}"
        shutil.copytree(base, root)
        env = {**os.environ, jobs.JOBS_ENV: workers}
        for cmd in (["tune"], ["train", "--method", "qat"], ["evaluate", "--method", "qat"]):
            r = subprocess.run(FRAQAT + cmd, cwd=root, env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        got[workers] = results(root)
    assert {paths.train_metrics("qat", s).as_posix() for s in (0, 1)} | \
        {paths.eval_metrics("qat", s).as_posix() for s in (0, 1)} <= set(got["2"])
    assert got["2"] == got["1"]


def test_a_stage_with_a_failed_seed_keeps_the_others_and_exits_with_its_line(tmp_path):
    """One seed's bad checkpoint: the other seed's run is written, the stage prints one line."""
    root = make_tiny_project(tmp_path, {"methods": ["qat"], "seeds": [0, 1],
                                        "train": {**TINY_PARAMS["train"], "steps": 8}})
    bad = root / paths.checkpoint_dir("qat", 1) / "checkpoint.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    r = subprocess.run(FRAQAT + ["train", "--method", "qat"], cwd=root, capture_output=True,
                       text=True, env={**os.environ, jobs.JOBS_ENV: "2"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"fraqat train: {bad.relative_to(root)}")
    assert (root / paths.train_metrics("qat", 0)).exists()
    assert not (root / paths.train_metrics("qat", 1)).exists()


def test_fraqat_error_survives_the_trip_from_a_worker():
    def run(i: int) -> None:
        raise FraqatError(f"point {i} failed")

    with pytest.raises(FraqatError, match="point 0 failed"):
        jobs.run_all(run, [0, 1], workers=2)
