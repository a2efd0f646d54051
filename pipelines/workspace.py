"""Where a flow run's stages run: the user's workspace, or a scratch copy saved as an experiment.

params.yaml is the user's. A run that asks for other values (a profile, ``--bits``, ``--set``)
runs in a scratch clone of the repo at HEAD plus the uncommitted changes, whose DVC cache is
the repo's own (finished stages land there and in the run-cache, so nothing is lost and the
next run restores them), and is saved as a DVC experiment ref in the repo: ``dvc exp show``
lists it, ``dvc exp apply NAME`` brings its results into the workspace. This is what
``dvc exp run --temp -S …`` does, but with the stages as separate Prefect tasks. Only
``write_params`` changes params.yaml itself, with DVC's ``-S`` function.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from fraqat import profiles
from fraqat.io import atomic_path
from fraqat.params import Params, load_params


def check(root: Path, values: dict) -> Params:
    """params.yaml with ``values`` applied, validated; :class:`ParamsError` (one line) if not."""
    return load_params(root / "params.yaml", overrides=values)


def _run(cmd: list[str], cwd: Path) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited with {out.returncode}: "
                           + (out.stderr.strip() or out.stdout.strip()).splitlines()[-1])
    return out.stdout.strip()


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def write_params(root: Path, values: dict) -> None:
    """Apply ``values`` to ``root``'s params.yaml with DVC's ``-S`` function (comments kept);
    keys already at that value are left alone, so an unchanged file is not rewritten."""
    from dvc.utils.hydra import apply_overrides

    params = root / "params.yaml"
    current = profiles.flat(yaml.safe_load(params.read_text()) or {})
    changed = {k: v for k, v in values.items() if current.get(k, object()) != v}
    if changed:
        with atomic_path(params) as scratch:
            shutil.copyfile(params, scratch)
            apply_overrides(str(scratch), profiles.as_set_args(changed))


@contextmanager
def scratch_copy(root: Path) -> Iterator[Path]:
    """A clone of ``root`` at HEAD with its uncommitted changes, sharing its DVC cache;
    removed afterwards (the cache keeps every finished stage)."""
    tmp = Path(tempfile.mkdtemp(prefix="fraqat-exp-"))
    work = tmp / root.name
    try:
        head = _run(["git", "rev-parse", "HEAD"], root)
        _run(["git", "clone", "-q", "--no-checkout", str(root), str(work)], tmp)
        _run(["git", "checkout", "-q", head], work)
        listed = _run(["git", "ls-files", "-z", "-m", "-o", "--exclude-standard"], root)
        for f in filter(None, listed.split("\0")):
            if (root / f).is_file():
                (work / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / f, work / f)
            elif (work / f).is_file():
                (work / f).unlink()  # deleted in the workspace
        for key, default in (("user.name", "fraqat flow"), ("user.email", "flow@fraqat.local")):
            got = subprocess.run(["git", "config", key], cwd=root, capture_output=True,
                                 text=True).stdout.strip()
            _run(["git", "config", key, got or default], work)
        if (root / ".dvc/config.local").is_file():
            shutil.copy2(root / ".dvc/config.local", work / ".dvc/config.local")
        cache = _run(_dvc("cache", "dir"), root)
        _run(_dvc("config", "--local", "cache.dir", str((root / cache).resolve())), work)
        yield work
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_experiment(work: Path, name: str) -> None:
    """Commit the scratch copy's params, lock and reports on top of its baseline and push the
    commit into the origin repo as DVC's experiment ref ``refs/exps/…/name`` (the data is
    already in the shared cache). What ``dvc exp save`` + ``dvc exp push --no-cache`` do,
    except that a run of some stages (``targets``) is kept too: ``exp save`` refuses
    outputs that were not produced."""
    from dvc.repo.experiments.refs import ExpRefInfo

    baseline = _run(["git", "rev-parse", "HEAD"], work)
    _run(["git", "add", "-A"], work)
    _run(["git", "commit", "-q", "--allow-empty", "-m", f"fraqat flow: experiment {name}"], work)
    ref = str(ExpRefInfo(baseline_sha=baseline, name=name))
    _run(["git", "push", "-q", "--force", "origin", f"HEAD:{ref}"], work)


def describe(values: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items()) or "params.yaml as is"
