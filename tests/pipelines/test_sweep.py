"""The sweep over a Prefect work pool: 2 workers in 2 clones, a shared git remote for the
experiments' refs and a shared DVC remote folder for their outputs, a real local server.

One worker is killed (its whole process group, as a machine that dies) while it trains: the
sweep marks its run crashed and submits the point again, the other worker runs it, and the
collected table equals the one a single ``dvc exp run`` of the same cell gives.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

pytest.importorskip("prefect")
pytest.importorskip("dvc")

from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.objects import StateType

from pipelines.experiments import regime
from pipelines.sweep import points, table
from pipelines.sweep_point import overrides_args
from tests.pipelines.test_flows import _stop, client_for, prefect_server  # noqa: F401  (a fixture)
from tests.tiny import env_for, git, make_tiny_repo

CELL = "w4-lr3e-3"
GRID = {"grid": "regime", "cells": [CELL], "methods": ["qat", "fraqat-late"], "seeds": [0, 1]}
# Toy sizes; one learning rate, no tuning runs. Both paths get the same overrides.
SETS = {"tune.lr_grid": "[]", "train.lr": "0.003", "pretrain.steps": "2", "pretrain.width": "16",
        "calibration.num_samples": "32", "calibration.validation_samples": "8",
        "train.steps": "8", "train.checkpoint_every": "2", "train.probe_every": "4",
        "train.probe_samples": "8"}


def clones(tmp: Path, *names: str) -> dict[str, Path]:
    """A bare ``origin`` of the tiny project and clones of it side by side (so the default
    DVC remote, ``../fraqat-dvc-remote`` of each clone, is one folder for all)."""
    src = make_tiny_repo(tmp / "src")
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(tmp / "origin.git")],
                   check=True)
    out = {}
    for name in names:
        subprocess.run(["git", "clone", "-q", str(tmp / "origin.git"), str(tmp / name)],
                       check=True)
        git(tmp / name, "config", "user.email", "ci@fraqat.local")
        git(tmp / name, "config", "user.name", "fraqat tests")
        out[name] = tmp / name
    return out


def sweep(repo: Path, server_env: dict[str, str], *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.sweep", *args], cwd=repo,
                            env=env_for(repo, **server_env, **kw), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def start_worker(repo: Path, server_env: dict[str, str], name: str) -> subprocess.Popen:
    log = (repo.parent / f"{name}.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "pipelines.sweep", "worker", "--name", name],
                            cwd=repo, env=env_for(repo, **server_env,
                                                  PREFECT_WORKER_HEARTBEAT_SECONDS="2",
                                                  PREFECT_WORKER_QUERY_SECONDS="2"),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def single_machine(repo: Path, server_env: dict[str, str]) -> subprocess.Popen:
    """The cell as one experiment of the whole grid in one workspace (what ``pipelines.
    experiments.regime queue --target train`` queues), with the same overrides."""
    sets = {**regime.BASE, "seeds": "[0,1]", **regime.CELLS[CELL], "methods": "[qat,fraqat-late]",
            **SETS}
    return subprocess.Popen(["dvc", "exp", "run", "train", "-n", CELL, *overrides_args(sets)],
                            cwd=repo, env=env_for(repo, **server_env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def exp_show(repo: Path) -> list[dict]:
    return json.loads(subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo,
                                     env=env_for(repo), check=True, capture_output=True,
                                     text=True).stdout)


def kill_machine(clone: Path) -> None:
    """SIGKILL every process of ``clone``'s worker: the worker, and its flow run, which Prefect
    starts in a session of its own, with their children (all carry ``FRAQAT_CLONE``)."""
    mine = [p for p in psutil.process_iter()
            if _environ(p).get("FRAQAT_CLONE") == str(clone)]
    assert mine, f"no process of {clone}"
    for proc in mine:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return {}


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, path.read_text()[-4000:]
        time.sleep(1)


@pytest.mark.slow
def test_two_workers_reproduce_the_single_machine_table_after_a_kill(
        prefect_server, tmp_path):  # noqa: F811  (the fixture)
    _, server_env = prefect_server
    repos = clones(tmp_path, "lead", "solo", "a", "b")
    deploy = sweep(repos["lead"], server_env, "deploy")
    assert deploy.wait(timeout=120) == 0, deploy.stdout.read() if deploy.stdout else ""
    solo = single_machine(repos["solo"], server_env)
    workers = {n: start_worker(repos[n], server_env, n) for n in ("a", "b")}
    args = ["run", "--grid", "regime", "--cells", CELL, "--methods", "qat", "fraqat-late",
            "--seeds", "0", "1", "--set", *(f"{k}={v}" for k, v in SETS.items())]
    run = sweep(repos["lead"], server_env, *args)
    try:
        wait_for(tmp_path / "b.log", "Running stage 'train@", workers["b"], timeout=900)
        kill_machine(repos["b"])  # the worker and its run are gone mid-training
        out, _ = run.communicate(timeout=1200)
        solo_out, _ = solo.communicate(timeout=900)
    finally:
        for proc in (run, solo, *workers.values()):
            _stop(proc)
    assert run.returncode == 0, out[-6000:]
    assert "submitting it again" in out and ("is offline" in out or "no heartbeat" in out), out
    assert solo.returncode == 0, solo_out[-4000:]

    pts = points(**GRID, sets=SETS)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repos["lead"], check=True,
                         capture_output=True, text=True).stdout.strip()
    swept, _ = table("regime", pts, exp_show(repos["lead"]), rev, repos["lead"])
    want = regime.summarize(regime.runs(exp_show(repos["solo"]), repos["solo"]))
    assert list(swept["seeds"]) == [2, 2]  # every point once: none lost, none counted twice
    def rows(frame: pd.DataFrame) -> pd.DataFrame:  # points finish in any order
        return frame.sort_values(["cell", "method"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(rows(swept), rows(want), rtol=1e-6)
    on_remote = subprocess.run(["dvc", "exp", "list", "origin", "--name-only"],
                               cwd=repos["lead"], env=env_for(repos["lead"]), check=True,
                               capture_output=True, text=True).stdout.split()
    assert sorted(on_remote) == sorted(p.name for p in pts)
    # the run's outputs come through the DVC remote (lead computed nothing); apply exits 255
    # for the stages that never ran (target train), so the check is the folder itself
    lead = env_for(repos["lead"])
    subprocess.run(["dvc", "exp", "pull", "--force", "origin", pts[0].name], cwd=repos["lead"],
                   env=lead, check=True)
    subprocess.run(["dvc", "exp", "apply", pts[0].name], cwd=repos["lead"], env=lead)
    assert any((repos["lead"] / "data/runs/qat/s0").iterdir())
    assert (repos["lead"] / ".sweep/regime.md").read_text().strip() in out
    with client_for(server_env) as client:  # what the UI shows: the sweep, its children, table
        runs = client.read_flow_runs()
        (parent,) = [r for r in runs if r.name and r.deployment_id is None
                     and r.parent_task_run_id is None and r.state_type == StateType.COMPLETED]
        children = [r for r in runs if r.deployment_id is not None]
        assert {r.name.split(" (run ")[0] for r in children
                if r.state_type == StateType.COMPLETED} == {p.name for p in pts}
        assert any(r.state_type == StateType.CRASHED for r in children)
        assert {r.labels.get("fraqat.worker") for r in children} == {"a", "b"}
        tasks = {t.id: t for t in client.read_task_runs()}
        assert all(tasks[r.parent_task_run_id].flow_run_id == parent.id for r in children)
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["fraqat-sweep-table"])))
        assert artifact.flow_run_id == parent.id and "4 of 4 points" in str(artifact.data)


def test_a_worker_that_cannot_reach_the_remote_fails_in_one_line(tmp_path):
    """A worker stops in one line when a remote does not answer, or when its clone holds
    edits that a point's reset would lose."""
    repo = clones(tmp_path, "a")["a"]
    git(repo, "remote", "set-url", "origin", str(tmp_path / "gone.git"))
    proc = subprocess.run([sys.executable, "-m", "pipelines.sweep", "worker"], cwd=repo,
                          env=env_for(repo), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot reach the git remote 'origin'")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr

    git(repo, "remote", "set-url", "origin", str(tmp_path / "origin.git"))
    with (repo / "fraqat/io.py").open("a") as f:
        f.write("# an edit a point's reset would lose\n")
    proc = subprocess.run([sys.executable, "-m", "pipelines.sweep", "worker"], cwd=repo,
                          env=env_for(repo), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {repo} has uncommitted changes (fraqat/io.py)")


def test_points_are_named_by_grid_point_and_reuse_the_regime_cells():
    pts = points(**GRID, sets={"train.steps": "8"})
    assert [p.name for p in pts] == [f"{CELL}-{m}-s{s}" for m in ("qat", "fraqat-late")
                                     for s in (0, 1)]
    first = pts[0].overrides
    assert first["methods"] == "[qat]" and first["seeds"] == "[0]" and first["device"] == "cpu"
    assert {k: first[k] for k in regime.CELLS[CELL]} == regime.CELLS[CELL]
    (cell,) = points("ablation-quick", ["w3-final70"])
    assert cell.name == "w3-final70" and cell.overrides["bits"] == 3  # one experiment a cell


def test_a_bad_point_stops_the_sweep_in_one_line_before_any_run(capsys, monkeypatch):
    from pipelines.sweep import main
    from tests.tiny import ROOT

    monkeypatch.chdir(ROOT)  # the project's params.yaml, read only
    assert main(["run", "--cells", CELL, "--methods", "qat", "nope", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: point {CELL}-nope-s0: ") and err.count("\n") == 1
    assert main(["run", "--cells", "w9"]) == 2
    assert "unknown cell(s) w9 of grid regime (allowed: " in capsys.readouterr().err
