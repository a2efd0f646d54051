"""The default DVC remote: a folder beside the repo, so `dvc push` works out of the box and a
fresh clone fetches the results (`dvc pull`) instead of recomputing them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytest.importorskip("dvc")

from tests.tiny import env_for, git, make_tiny_repo


def dvc(repo: Path, *args: str) -> str:
    done = subprocess.run(["dvc", *args], cwd=repo, env=env_for(repo), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_default_remote_is_a_folder_beside_the_clone(tmp_path):
    repo = make_tiny_repo(tmp_path / "a")
    assert dvc(repo, "remote", "default").strip() == "shared"
    url = dvc(repo, "config", "remote.shared.url").strip()  # relative to .dvc/config
    assert (repo / ".dvc" / url).resolve() == (tmp_path / "fraqat-dvc-remote").resolve()


@pytest.mark.slow
def test_push_then_pull_in_a_fresh_clone_leaves_dvc_status_clean(tmp_path):
    repo = make_tiny_repo(tmp_path / "a")
    dvc(repo, "repro", "prepare")
    git(repo, "add", "dvc.lock")
    git(repo, "commit", "-q", "-m", "prepare")
    dvc(repo, "push")
    assert any((tmp_path / "fraqat-dvc-remote").rglob("*")), "nothing was pushed"

    subprocess.run(["git", "clone", "-q", str(repo), str(tmp_path / "b")], check=True)
    fresh = tmp_path / "b"
    # the stage that ran (the others have not run anywhere, so they are not in dvc.lock)
    assert "up to date" not in dvc(fresh, "status", "prepare")  # missing before the pull
    dvc(fresh, "pull", "prepare")
    assert "Data and pipelines are up to date." in dvc(fresh, "status", "prepare")
    assert (fresh / "data/dataset").is_dir()
