"""The Prefect layer: the flow runs the DVC stages against a real local Prefect server.

The server (``prefect server start`` on a free loopback port, its own ``PREFECT_HOME``) and the
flow run in subprocesses of this test; every one is stopped by its process group in teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytest.importorskip("prefect")
pytest.importorskip("dvc")

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
from prefect.states import Completed, Failed

from pipelines.flows import LockBusy, StageError, _fail, _is_transient, stage_graph
from tests.tiny import env_for, make_tiny_repo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and everything it started (its own process group)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):  # children that outlived the leader
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect server on a free loopback port: yields (api_url, env for clients)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = dict(os.environ, PREFECT_HOME=str(home), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                             "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start:\n{(home / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url, {"PREFECT_HOME": str(home), "PREFECT_API_URL": url}
    finally:
        _stop(proc)
        log.close()


def run_flow(repo: Path, server_env: dict[str, str], *args: str,
             timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.flows", *args], cwd=repo,
                            env=env_for(repo, **server_env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        _stop(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


@contextlib.contextmanager
def client_for(server_env: dict[str, str]):
    with temporary_settings({PREFECT_API_URL: server_env["PREFECT_API_URL"],
                             PREFECT_HOME: server_env["PREFECT_HOME"]}):
        with get_client(sync_client=True) as client:
            yield client


def latest_flow_run(server_env: dict[str, str]):
    with client_for(server_env) as client:
        run = max(client.read_flow_runs(), key=lambda r: r.created)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
            key=ArtifactFilterKey(any_=["fraqat-comparison"])))
        tasks = client.read_task_runs()
    return run, artifacts, [t for t in tasks if t.flow_run_id == run.id]


@pytest.mark.slow
def test_flow_runs_the_pipeline_on_a_real_server(prefect_server, tmp_path):
    _, server_env = prefect_server
    repo = make_tiny_repo(tmp_path / "repo")
    start = time.perf_counter()
    proc = run_flow(repo, server_env, "--bits", "4", "--methods", "ptq", "fraqat")
    print(f"flow on the tiny profile: {time.perf_counter() - start:.1f} s")
    assert proc.returncode == 0, proc.stdout[-6000:]

    run, artifacts, tasks = latest_flow_run(server_env)
    assert run.state.type == StateType.COMPLETED
    assert len(artifacts) == 1 and "| `report` | ran |" in artifacts[0].data
    stages = stage_graph(repo)
    assert {s for s in stages if s.startswith("train@")} == {"train@ptq-0", "train@fraqat-0"}
    repro_runs = {t.name.removeprefix("dvc repro "): t for t in tasks
                  if t.name.startswith("dvc repro ")}
    assert set(repro_runs) == set(stages)
    assert all(t.state.type == StateType.COMPLETED for t in repro_runs.values())
    # Stage output reached the task logs line by line; DVC's lineage is complete and clean.
    assert "Running stage 'train@fraqat-0'" in proc.stdout
    assert yaml.safe_load((repo / "params.yaml").read_text())["methods"] == ["ptq", "fraqat"]
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo,
                            env=env_for(repo), capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}


@pytest.mark.slow
def test_flow_with_a_bad_value_fails_and_changes_nothing(prefect_server, tmp_path):
    _, server_env = prefect_server
    repo = make_tiny_repo(tmp_path / "repo")
    before = (repo / "params.yaml").read_text()
    proc = run_flow(repo, server_env, "--bits", "1", timeout=120)
    assert proc.returncode != 0
    assert "params.yaml: bits: 1.0: " in proc.stdout
    run, artifacts, tasks = latest_flow_run(server_env)
    assert run.state.type == StateType.FAILED and not artifacts
    assert not any(t.name.startswith("dvc repro ") for t in tasks)
    assert (repo / "params.yaml").read_text() == before
    assert not (repo / "data").exists()


@pytest.mark.slow
def test_served_flow_takes_parameters_from_the_api(prefect_server, tmp_path):
    """``python -m pipelines.flows serve``: a run started through the API (as the UI does)."""
    _, server_env = prefect_server
    repo = make_tiny_repo(tmp_path / "repo")
    log = (tmp_path / "serve.log").open("w+")
    serve = subprocess.Popen([sys.executable, "-m", "pipelines.flows", "serve", "--name", "ci"],
                             cwd=repo, env=env_for(repo, **server_env), stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with client_for(server_env) as client:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(Exception):
                    deployment = client.read_deployment_by_name("fraqat-pipeline/ci")
                    break
                assert serve.poll() is None and time.monotonic() < deadline, "serve failed"
                time.sleep(1)
            run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"bits": 5, "targets": ["prepare"]})
            deadline = time.monotonic() + 150
            while not (state := client.read_flow_run(run.id).state).is_final():
                assert time.monotonic() < deadline, "served run did not finish"
                time.sleep(1)
    finally:
        _stop(serve)
        log.seek(0)
        output = log.read()
        log.close()
    assert state.type == StateType.COMPLETED, output[-6000:]
    assert yaml.safe_load((repo / "params.yaml").read_text())["bits"] == 5
    assert (repo / "data/dataset/meta.json").exists()


@pytest.mark.slow
def test_a_busy_dvc_lock_is_retried(prefect_server, tmp_path):
    """Another process holds DVC's write lock on a stage's output: the task fails as
    LockBusy, Prefect retries it after the delay, and the retry succeeds once it is free."""
    from dvc.fs import localfs
    from dvc.rwlock import rwlock

    _, server_env = prefect_server
    repo = make_tiny_repo(tmp_path / "repo")
    (repo / ".dvc/tmp").mkdir(exist_ok=True)
    lines = []
    with contextlib.ExitStack() as held:
        held.enter_context(rwlock(str(repo / ".dvc/tmp"), localfs, "test holds it", [],
                                  [str(repo / "data/dataset")], False))
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.flows", "--targets", "prepare"],
                                cwd=repo, env=env_for(repo, **server_env), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            for line in proc.stdout:
                lines.append(line)
                if "is busy, it is being blocked by" in line:
                    held.close()  # free the lock: the retry (5 s later) gets it
            proc.wait(timeout=120)
        finally:
            _stop(proc)
    out = "".join(lines)
    assert proc.returncode == 0, out[-6000:]
    assert "LockBusy" in out and "Retry 1/3" in out
    run, _, tasks = latest_flow_run(server_env)
    (prepare,) = [t for t in tasks if t.name == "dvc repro prepare"]
    assert run.state.type == StateType.COMPLETED and prepare.run_count == 2


# --- no server needed ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory) -> Path:
    return make_tiny_repo(tmp_path_factory.mktemp("graph") / "repo")


def test_stage_graph_is_dvcs_graph_in_run_order(scratch_repo):
    listed = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"],
                            cwd=scratch_repo, env=env_for(scratch_repo), capture_output=True,
                            text=True, check=True).stdout.split()
    graph = stage_graph(scratch_repo)
    assert sorted(graph) == sorted(listed)
    seen: set[str] = set()
    for stage, upstream in graph.items():
        assert set(upstream) <= seen, stage  # every stage comes after what it depends on
        seen.add(stage)
    assert set(graph["teacher"]) == {"pretrain", "calibrate"}


def test_targets_keep_the_stages_and_their_upstream(scratch_repo):
    assert list(stage_graph(scratch_repo, ["teacher"])) == [
        "prepare", "pretrain", "calibrate", "teacher"]
    trains = stage_graph(scratch_repo, ["train"])
    assert {s for s in trains if s.startswith("train@")} == {
        "train@ptq-0", "train@qat-0", "train@fraqat-0"}
    with pytest.raises(StageError, match="unknown stage"):
        stage_graph(scratch_repo, ["nope"])


def test_only_lock_failures_are_retried():
    busy = _fail("dvc repro x", 255, "ERROR: Unable to acquire lock. Most likely another DVC")
    real = _fail("dvc repro x", 255, "ERROR: failed to reproduce 'x': exited with 2")
    assert isinstance(busy, LockBusy) and type(real) is StageError
    assert _is_transient(None, None, Failed(data=busy))
    assert not _is_transient(None, None, Failed(data=real))
    assert not _is_transient(None, None, Completed())
