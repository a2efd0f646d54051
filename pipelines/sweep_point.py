"""One point of a sweep: a DVC experiment in a Prefect worker's own clone.

The deployment's pull step moves the flow run into ``$FRAQAT_CLONE`` (``python -m
pipelines.sweep worker`` sets it to the clone it starts in), so each machine runs the point in
its checkout. A point resets the clone's tracked files to the sweep's commit (fetched from the
shared git remote; ``data/`` and the training checkpoints stay), runs ``dvc exp run TARGET -n
NAME -S ...`` in the workspace, and pushes the experiment with ``dvc exp push``: its git ref to
the git remote, its outputs to DVC's default remote. The name is a pure function of the grid
point, so a point that was already pushed (a retry after a worker died past its push) is not
run or counted again; a killed run retried in the same clone resumes from the checkpoints the
trainer left in ``data/checkpoints/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

CLONE_ENV = "FRAQAT_CLONE"  # the worker's clone: the deployment's pull step changes into it
ENTRYPOINT = "pipelines/sweep_point.py:sweep_point"
WORKER_LABEL = "fraqat.worker"  # set by the run itself: the worker that really runs it
RUN_WRITES = ("params.yaml", "dvc.lock")  # with reports/ and .gitignore files: what a run edits
PULL_STEPS = [{"prefect.deployments.steps.set_working_directory": {
    "directory": "{{ $" + CLONE_ENV + " }}"}}]


class SweepError(RuntimeError):
    """A one-line reason a point or a sweep cannot go on (a remote, a commit, a grid)."""


def env(repo: Path) -> dict[str, str]:
    """This interpreter's ``bin`` first on ``PATH`` and the clone first on ``PYTHONPATH``: the
    code a point runs is the clone's."""
    out = dict(os.environ)
    out["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), out.get("PATH", "")])
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), out.get("PYTHONPATH")]))
    out.setdefault("PYTHONUNBUFFERED", "1")
    return out


def sh(repo: Path, *cmd: str, what: str | None = None, timeout: float | None = None) -> str:
    """Run ``cmd`` in ``repo``; its stdout, or :class:`SweepError` with its last error line."""
    try:
        done = subprocess.run(cmd, cwd=repo, env=env(repo), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SweepError(f"{what or ' '.join(cmd[:3])}: no answer in {timeout:g} s") from None
    if done.returncode:
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()] or ["?"]
        reason = next((ln for ln in reversed(lines) if ln.startswith(("ERROR", "fatal"))),
                      lines[-1])
        raise SweepError(f"{what or ' '.join(cmd[:3])}: {reason.strip()}")
    return done.stdout


def check_remotes(repo: Path, git_remote: str) -> str:
    """Fail in one line unless the git remote (experiment refs) and DVC's default remote
    (outputs) answer from ``repo``; returns the DVC remote's name."""
    from dvc.repo import Repo

    sh(repo, "git", "ls-remote", "--heads", git_remote, timeout=120,
       what=f"cannot reach the git remote {git_remote!r} from {repo}")
    with Repo(str(repo)) as dvc:
        name = dvc.config["core"].get("remote")
        if not name:
            raise SweepError(f"no default DVC remote in {repo} (dvc remote add -d NAME URL)")
        pin_local_remote(dvc, str(name))
        try:
            remote = dvc.cloud.get_remote(name)
            remote.fs.makedirs(remote.path, exist_ok=True)  # a local folder: made on first use
            if not remote.fs.exists(remote.path):
                raise FileNotFoundError(remote.path)
        except Exception as exc:  # any backend's error: one line, the point fails
            raise SweepError(f"cannot reach the DVC remote {name!r} from {repo}: "
                             f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
    return str(name)


def pin_local_remote(dvc, name: str) -> None:
    """Write a local-folder remote's absolute path into ``.dvc/config.local``: DVC resolves a
    relative path against ``/`` when it reads a commit's config (``dvc exp push``, ``dvc push
    -a``), which would send the data to ``/fraqat-dvc-remote``."""
    url = str(dvc.config["remote"].get(name, {}).get("url", ""))
    local = dvc.config.load_one("local").get("remote", {}).get(name, {})
    if url and "://" not in url and os.path.isabs(url) and "url" not in local:
        with dvc.config.edit("local") as conf:
            conf.setdefault("remote", {}).setdefault(name, {})["url"] = url


def exp_names(repo: Path, git_remote: str | None, rev: str) -> set[str]:
    """Experiments of baseline ``rev``: in ``repo``, or on ``git_remote`` when given."""
    out = sh(repo, "dvc", "exp", "list", *([git_remote] if git_remote else []), "--rev", rev,
             "--name-only", what="dvc exp list")
    return {line.strip() for line in out.splitlines() if line.strip()}


def check_clean(repo: Path) -> None:
    """Refuse a clone with edits an experiment does not make (sources, ``dvc.yaml``...): a
    point resets tracked files, which must never cost anyone's work."""
    status = sh(repo, "git", "status", "--porcelain", "--untracked-files=no")
    edits = [line[3:] for line in status.splitlines()
             if line[3:] not in RUN_WRITES and not line[3:].startswith("reports/")
             and Path(line[3:]).name != ".gitignore"]
    if edits:
        raise SweepError(f"{repo} has uncommitted changes ({', '.join(edits[:3])}): a worker "
                         "resets tracked files to each sweep's commit; give it a clone of its own")


def checkout(repo: Path, git_remote: str, rev: str) -> None:
    """Reset the clone's tracked files to ``rev`` (fetched from ``git_remote``): each point
    starts from the sweep's commit, not from the previous point's parameters."""
    check_clean(repo)
    if sh(repo, "git", "rev-parse", "HEAD").strip() != rev:
        sh(repo, "git", "fetch", "-q", git_remote, what=f"git fetch {git_remote}")
        if subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], cwd=repo).returncode:
            raise SweepError(f"commit {rev[:12]} is not on the git remote {git_remote!r}: "
                             "push it before the sweep")
    sh(repo, "git", "checkout", "-q", "--force", "--detach", rev, what="git checkout")


def overrides_args(overrides: dict[str, object]) -> list[str]:
    """``-S key=value`` for each override, in order (``dvc exp run``'s parameter syntax)."""
    return [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")]


@task(task_run_name="dvc exp run {name}", cache_policy=NO_CACHE)
def run_experiment(repo: str, name: str, overrides: dict[str, object],
                   target: str | None) -> None:
    """``dvc exp run [TARGET] -n NAME -S ...`` in the workspace, its lines in the run's log."""
    logger = get_run_logger()
    cmd = ["dvc", "exp", "run", *([target] if target else []), "-n", name,
           *overrides_args(overrides)]
    logger.info("$ %s", " ".join(cmd))
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=repo, env=env(Path(repo)), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line := line.rstrip():
                lines.append(line)
                logger.info(line)
    if proc.returncode:
        cause = [ln for ln in lines if not ln.startswith("ERROR")][-1:] or ["?"]
        raise SweepError(f"dvc exp run {name} exited with {proc.returncode}: {cause[0]}")


def label_worker() -> None:
    """Label this run with the worker whose process runs it (Prefect's own worker label is
    set before the workers' race for a run is decided, so it may name the loser)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    worker = os.environ.get("PREFECT__WORKER_NAME")
    if worker and flow_run.id:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(UUID(flow_run.id), {WORKER_LABEL: worker})


@flow(name="fraqat-sweep-point", flow_run_name="{name}", log_prints=True)
def sweep_point(name: str, overrides: dict[str, object], rev: str, git_remote: str = "origin",
                target: str | None = None) -> str:
    """Run grid point ``name`` (``dvc exp run -S`` ``overrides`` on commit ``rev``, stopped at
    ``target``) in this worker's clone and push it; returns what happened to it."""
    repo = Path.cwd()
    label_worker()
    dvc_remote = check_remotes(repo, git_remote)
    if name in exp_names(repo, git_remote, rev):
        return f"{name}: already on {git_remote}"
    checkout(repo, git_remote, rev)
    if name not in exp_names(repo, None, rev):  # a local run whose push did not finish
        run_experiment(str(repo), name, overrides, target)
    sh(repo, "dvc", "exp", "push", "--force", "-r", dvc_remote, git_remote, name,
       what=f"dvc exp push {git_remote} {name}")
    return f"{name}: pushed to {git_remote} (data: DVC remote {dvc_remote!r})"
