"""Bad files as a user meets them: a real ``fraqat`` process, ``dvc repro`` and the Prefect flow.

A tiny repo on ``profiles/pipeline-tiny.yaml`` whose inputs (a diffusers pipeline folder, a
prompts file) live outside it, as a user's do: DVC does not track them, so nothing rebuilds
them, and the first stage stops with the one line of ``fraqat.checked``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_checked import cut, snapshot
from tests.tiny import env_for, git, make_tiny_repo

pytestmark = pytest.mark.slow


@pytest.fixture
def repo(tiny_pipeline_dir, tmp_path) -> Path:
    """A tiny repo whose params point at a copy of the tiny Sana pipeline outside it."""
    root = make_tiny_repo(tmp_path / "repo", profile="profiles/pipeline-tiny.yaml")
    pipe = shutil.copytree(tiny_pipeline_dir("sana"), tmp_path / "pipe")
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw.update(model="sana-600m", model_path=str(pipe))
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    git(root, "commit", "-qam", "a sana pipeline")
    return root


def test_dvc_repro_stops_at_the_first_stage_with_the_line(repo, tmp_path):
    cut(tmp_path / "pipe" / "model_index.json")
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env_for(repo),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    line = (f"fraqat prepare: {tmp_path}/pipe/model_index.json: not a readable JSON file "
            "(JSONDecodeError: ")
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
    (mine,) = [x for x in out.splitlines() if x.startswith("fraqat ")]
    assert mine.startswith(line) and mine.endswith("point model_path at a complete "
                                                   "SanaPipeline folder"), mine
    assert "failed to run: fraqat prepare, exited with 2" in out
    assert not (repo / "data").exists() and not (repo / "dvc.lock").exists()


def test_the_flow_fails_one_task_with_the_line_as_its_message(repo, tmp_path, monkeypatch):
    """In-process flow on a temporary Prefect server: the ``prepare`` task fails with the
    stage's line as its state message; no other task ran; nothing was written."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.testing.utilities import prefect_test_harness

    from pipelines.flows import fraqat_pipeline

    (tmp_path / "prompts.txt").write_bytes(bytes(range(200, 256)))
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["prompts_path"] = str(tmp_path / "prompts.txt")
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    git(repo, "commit", "-qam", "a prompts file")
    before = snapshot(repo)
    for key, value in env_for(repo).items():
        monkeypatch.setenv(key, value)
    with prefect_test_harness(server_startup_timeout=180):
        state = fraqat_pipeline(repo=str(repo), targets=["calibrate"], return_state=True)
        with get_client(sync_client=True) as client:
            tasks = [t for t in client.read_task_runs()
                     if t.flow_run_id == state.state_details.flow_run_id]
    assert state.type == StateType.FAILED
    failed = [t for t in tasks if t.state.type == StateType.FAILED]
    assert [t.name for t in failed] == ["dvc repro prepare"]
    line = (f"fraqat prepare: {tmp_path}/prompts.txt: not UTF-8 text (byte 0xc8 at offset 0); "
            "save it as UTF-8 text, one prompt per line")
    message = failed[0].state.message
    assert message.endswith(f"StageError: {line}") and "Traceback" not in message, message
    assert not any(t.state.type == StateType.COMPLETED for t in tasks
                   if t.name.startswith("dvc repro "))
    assert snapshot(repo) == before and not (repo / "dvc.lock").exists()
