"""Tiny projects for the tests, at toy sizes so stages run for real in seconds.

``make_tiny_repo``: a git copy of the sources with a params profile, for DVC and Prefect runs
(never run DVC in the real workspace). ``make_tiny_project``: a folder where the first stages
ran in-process, for tests of the later stages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from fraqat import profiles

ROOT = Path(__file__).resolve().parents[1]
# Stage outputs and DVC's lock are results, not sources: a copy starts from a clean slate.
_SKIP_DIRS = ("data/", "reports/", ".dvc/cache/", ".dvc/tmp/")
_SKIP_FILES = ("dvc.lock",)


def source_files(src: Path = ROOT) -> list[str]:
    """Tracked + untracked-but-not-ignored files of ``src``, less outputs (``data/``, ...)."""
    out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=src,
                         check=True, capture_output=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and not f.startswith(_SKIP_DIRS)
                   and f not in _SKIP_FILES and (src / f).is_file()})


def env_for(repo: Path, **extra: str) -> dict[str, str]:
    """Environment for ``dvc``/``fraqat``/``python -m pipelines.flows`` run inside ``repo``.

    ``PYTHONPATH`` puts the copy's sources ahead of the editable install of the real checkout.
    """
    env = dict(os.environ)
    env.update(PYTHONPATH=str(repo), PATH=f"{Path(sys.executable).parent}{os.pathsep}"
               f"{env.get('PATH', '')}", DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1")
    env.pop("PREFECT_API_URL", None)
    env.update(extra)
    return env


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def make_tiny_repo(dst: Path, profile: str | None = "profiles/tiny.yaml") -> Path:
    """Copy the sources to ``dst``, apply ``profile`` to its params.yaml, ``git init`` + commit.

    ``profile=None`` keeps params.yaml as it is (for runs that apply a profile themselves).
    """
    for f in source_files():
        target = dst / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)
    if profile is not None:
        (dst / "params.yaml").write_text(yaml.safe_dump(profiles.merged(ROOT / profile),
                                                        sort_keys=False))
    git(dst, "init", "-q", "-b", "main")
    git(dst, "config", "user.email", "ci@fraqat.local")
    git(dst, "config", "user.name", "fraqat tests")
    git(dst, "add", "-A")
    git(dst, "commit", "-q", "-m", "tiny profile")
    return dst


TINY_PARAMS = {
    "methods": ["ptq", "qat", "fraqat"],
    "seeds": [0],
    "pretrain": {"width": 16, "layers": 1, "heads": 2, "steps": 5, "batch_size": 16},
    "calibration": {"num_samples": 64},
    "train": {"steps": 24, "batch_size": 8, "checkpoint_every": 4, "probe_every": 8,
              "probe_samples": 16},
    "eval": {"num_images": 20, "steps": 2, "batch_size": 20, "classifier_steps": 20},
    "tune": {"lr_grid": []},  # train.lr: the trainer tests are not about tuning
}


def make_tiny_project(root: Path, overrides: dict | None = None) -> Path:
    """Write params.yaml and run prepare/pretrain/calibrate/teacher inside ``root``."""
    from fraqat.params import load_params
    from fraqat.stages import calibrate, prepare, pretrain, teacher

    params = {**TINY_PARAMS, **(overrides or {})}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        p = load_params("params.yaml")
        for stage in (prepare, pretrain, calibrate, teacher):
            stage.run(p)
    finally:
        os.chdir(cwd)
    return root
