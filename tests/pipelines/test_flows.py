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
)
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
from prefect.states import Completed, Failed

from pipelines.flows import LockBusy, StageError, _fail, _is_transient, stage_graph
from pipelines.run_artifacts import KEYS
from tests import browser
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
               PREFECT_SERVER_ANALYTICS_ENABLED="false",  # the UI's own calls go to this port
               PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")
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
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
        tasks = client.read_task_runs()
    return run, {a.key: a for a in artifacts}, [t for t in tasks if t.flow_run_id == run.id]


def exp_refs(repo: Path) -> list[str]:
    return subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
                          cwd=repo, capture_output=True, text=True, check=True).stdout.split()


@pytest.fixture(scope="module")
def tiny_run(prefect_server, tmp_path_factory):
    """The tiny profile's whole graph, once, in the workspace of a scratch repo."""
    _, server_env = prefect_server
    repo = make_tiny_repo(tmp_path_factory.mktemp("tiny-run") / "repo")
    start = time.perf_counter()
    # ~2 min on 2 idle cores; a loaded machine needs more (FRAQAT_TEST_FLOW_TIMEOUT, seconds).
    proc = run_flow(repo, server_env, "--methods", "ptq", "fraqat", "--write-params",
                    timeout=float(os.environ.get("FRAQAT_TEST_FLOW_TIMEOUT", 600)))
    print(f"flow on the tiny profile: {time.perf_counter() - start:.1f} s")
    assert proc.returncode == 0, proc.stdout[-6000:]
    return repo, proc, latest_flow_run(server_env)


@pytest.mark.slow
def test_flow_runs_the_pipeline_on_a_real_server(tiny_run):
    repo, proc, (run, artifacts, tasks) = tiny_run
    assert run.state.type == StateType.COMPLETED
    assert set(artifacts) == {"fraqat-progress", *KEYS}  # all on the flow run, none on a task
    assert all(a.task_run_id is None for a in artifacts.values())
    assert "| `report` | ran |" in artifacts["fraqat-comparison"].data
    assert "Smoke run: no verdict" in artifacts["fraqat-comparison"].data
    assert artifacts["fraqat-fid-plot"].data.count("data:image/png;base64,") == 1
    assert artifacts["fraqat-progress"].data == 100.0
    stages = stage_graph(repo)
    assert {s for s in stages if s.startswith("train@")} == {"train@ptq", "train@fraqat"}
    repro_runs = {t.name.removeprefix("dvc repro "): t for t in tasks
                  if t.name.startswith("dvc repro ")}
    assert set(repro_runs) == set(stages)
    assert all(t.state.type == StateType.COMPLETED for t in repro_runs.values())
    # Stage output reached the task logs line by line; DVC's lineage is complete and clean.
    assert "Running stage 'train@fraqat'" in proc.stdout
    assert "smoke run: no verdict" in proc.stdout and "Verdict" not in proc.stdout
    assert "Smoke run: no verdict" in (repo / "reports/comparison.md").read_text()
    assert yaml.safe_load((repo / "params.yaml").read_text())["methods"] == ["ptq", "fraqat"]
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo,
                            env=env_for(repo), capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}
    modes = {oct(p.stat().st_mode & 0o777) for p in (repo / "data").rglob("*")
             if p.is_file() and not p.is_symlink()}
    assert modes == {"0o644"}, modes  # the group can read every output


@pytest.mark.slow
def test_the_flow_run_page_shows_stages_and_artifacts(tiny_run, prefect_server, tmp_path):
    """What a user sees: the run page in a real browser, its task runs and artifacts tabs."""
    if browser.chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    url, _ = prefect_server
    repo, _, (run, artifacts, tasks) = tiny_run
    with browser.browser() as page:
        page.goto(f"{url.removesuffix('/api')}/runs/flow-run/{run.id}")
        page.wait_for_text("Task Runs", "Artifacts")
        page.click_text("Task Runs")
        page.wait_for_text("dvc repro prepare", "dvc repro train@fraqat", "dvc repro report")
        page.click_text("Artifacts")
        page.wait_for_text("fraqat-progress", *KEYS)
        page.screenshot(tmp_path / "artifacts.png")
        page.goto(f"{url.removesuffix('/api')}/artifacts/artifact/{artifacts['fraqat-fid-plot'].id}")
        page.wait_for_text("FID per method")
        sizes = page.eval("[...document.images].filter(i => i.src.startsWith('data:image/png'))"
                          ".map(i => [i.naturalWidth, i.clientWidth])")
        assert sizes and all(w > 100 for pair in sizes for w in pair), sizes  # drawn, no text
        assert "base64" not in page.text()


@pytest.mark.slow
def test_bad_values_are_refused_before_a_flow_run(prefect_server, tmp_path):
    _, server_env = prefect_server
    repo = make_tiny_repo(tmp_path / "repo")
    before = (repo / "params.yaml").read_bytes()
    with client_for(server_env) as client:
        runs = len(client.read_flow_runs())
    proc = run_flow(repo, server_env, "--bits", "1", timeout=120)
    assert proc.returncode == 2
    assert proc.stdout.strip().splitlines() == [
        "error: params.yaml: bits: 1.0: Input should be greater than or equal to 2 "
        "(allowed: a number >= 2 and <= 16)"]
    with client_for(server_env) as client:
        assert len(client.read_flow_runs()) == runs  # no run was started
    assert (repo / "params.yaml").read_bytes() == before
    assert not (repo / "data").exists()


@pytest.mark.slow
def test_a_profile_runs_as_an_experiment_and_params_stay_the_users(prefect_server, tmp_path):
    """``--profile tiny``: a DVC experiment in a scratch copy; params.yaml byte-identical."""
    _, server_env = prefect_server
    repo = make_tiny_repo(tmp_path / "repo", profile=None)
    before = (repo / "params.yaml").read_bytes()
    proc = run_flow(repo, server_env, "--profile", "tiny", "--targets", "prepare", timeout=180)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert (repo / "params.yaml").read_bytes() == before
    assert not (repo / "data/dataset").exists()  # the workspace did not run it
    (ref,) = exp_refs(repo)
    assert "experiment tiny-" in proc.stdout and ref.rsplit("/", 1)[1] in proc.stdout
    import dvc.api

    rows = {r["Experiment"]: r for r in dvc.api.exp_show(str(repo)) if r.get("Experiment")}
    (row,) = rows.values()
    assert str(row["smoke"]) == "True" and float(row["train.steps"]) == 30


@pytest.mark.slow
def test_served_flow_takes_parameters_from_the_api(prefect_server, tmp_path):
    """``python -m pipelines.flows serve``: runs started through the API (as the UI does):
    other values run as an experiment; a bad one fails the run with one line."""
    _, server_env = prefect_server
    repo = make_tiny_repo(tmp_path / "repo")
    before = (repo / "params.yaml").read_bytes()
    log = (tmp_path / "serve.log").open("w+")
    serve = subprocess.Popen([sys.executable, "-m", "pipelines.flows", "serve", "--name", "ci"],
                             cwd=repo, env=env_for(repo, **server_env), stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    states = []
    try:
        with client_for(server_env) as client:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(Exception):
                    deployment = client.read_deployment_by_name("fraqat-pipeline/ci")
                    break
                assert serve.poll() is None and time.monotonic() < deadline, "serve failed"
                time.sleep(1)
            props = deployment.parameter_openapi_schema["properties"]
            assert "params.yaml" in props["bits"]["description"]
            assert "tiny" in props["profile"]["anyOf"][0]["enum"]
            for parameters in ({"bits": 5, "targets": ["prepare"]},
                               {"overrides": ["train.steps=0"], "targets": ["prepare"]}):
                run = client.create_flow_run_from_deployment(deployment.id,
                                                             parameters=parameters)
                deadline = time.monotonic() + 150
                while not (state := client.read_flow_run(run.id).state).is_final():
                    assert time.monotonic() < deadline, "served run did not finish"
                    time.sleep(1)
                states.append(state)
    finally:
        _stop(serve)
        log.seek(0)
        output = log.read()
        log.close()
    assert states[0].type == StateType.COMPLETED, output[-6000:]
    assert (repo / "params.yaml").read_bytes() == before and len(exp_refs(repo)) == 1
    assert states[1].type == StateType.FAILED
    assert states[1].message.startswith("params.yaml: train.steps: 0: ")
    assert "Traceback" not in output


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
        "train@ptq", "train@qat", "train@fraqat"}
    with pytest.raises(StageError, match="unknown stage"):
        stage_graph(scratch_repo, ["nope"])


def test_only_lock_failures_are_retried():
    busy = _fail("dvc repro x", 255, "ERROR: Unable to acquire lock. Most likely another DVC")
    real = _fail("dvc repro x", 255, "ERROR: failed to reproduce 'x': exited with 2")
    assert isinstance(busy, LockBusy) and type(real) is StageError
    assert _is_transient(None, None, Failed(data=busy))
    assert not _is_transient(None, None, Failed(data=real))
    assert not _is_transient(None, None, Completed())


def test_each_stage_gets_its_share_of_cores_for_its_run_workers(monkeypatch, tmp_path):
    """Concurrent stages times their pools of seeds stay within the cores."""
    from pipelines import flows

    monkeypatch.delenv("FRAQAT_JOBS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = flows._env(tmp_path)
    assert int(env["FRAQAT_JOBS"]) == max(1, (os.cpu_count() or 1) // flows.WORKERS)
    monkeypatch.setenv("FRAQAT_JOBS", "1")
    assert flows._env(tmp_path)["FRAQAT_JOBS"] == "1"
