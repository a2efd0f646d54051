"""Prefect flow over the DVC pipeline: each DVC stage is one Prefect task that runs it THROUGH DVC.

Every task calls ``dvc repro --single-item <stage>`` in the repo (a subprocess), so execution,
caching (cache + run-cache) and lineage (``dvc.lock``) stay DVC's; the flow re-implements no
stage. The task graph is DVC's own graph (``dvc.repo.Repo(...).index.graph``), so new stages and
the ``method × seed`` matrix appear without edits here.

Parameters. ``bits``, ``methods`` and ``seeds`` are written into ``params.yaml`` with
``dvc.utils.hydra.apply_overrides``, the function behind ``dvc exp run -S key=value``, after
``fraqat validate`` accepted the result (a bad value stops the flow and changes nothing). As with
``dvc exp run -S`` in the workspace, the new values stay in ``params.yaml``: after the run
``dvc status`` is clean and ``dvc exp save`` can record the run as an experiment.

Concurrency: stage-level calls in one workspace, not the experiment queue. DVC releases the
repo lock while a stage's command runs (``dvc/stage/run.py``: ``unlocked_repo(cmd_run)``) and
guards the stage's deps/outs with per-path read/write locks, so stages with no path in
conflict -- the ``train@method-seed`` branches, ``classifier``, the ``evaluate`` matrix -- run
at the same time; only DVC's short bookkeeping (hashing, saving outputs, writing ``dvc.lock``,
git autostage) is serialized on the repo lock, which ``dvc --wait-for-lock`` waits for. Each
call is its own process: the lock is a per-process file lock, so threads sharing one
``Repo`` object would not exclude each other. ``dvc exp run --queue`` + ``dvc queue start -j N``
was not chosen: each queued experiment runs the *whole* pipeline in its own temporary copy, so
the method × seed branches would end up in separate experiments (the report needs all of them
in one workspace), results need ``dvc exp apply`` (one at a time), and the queue adds Celery
workers. At most ``FRAQAT_FLOW_WORKERS`` stage commands (default ``min(4, cores)``) run at
once, each with ``cores // workers`` OpenMP threads unless ``OMP_NUM_THREADS`` is set. A task
that still meets a busy lock (a path lock, git's ``index.lock``) fails as :class:`LockBusy` and
is retried with a delay; a stage that fails for real is not retried, and its downstream stages
do not start.

Entry points: ``python -m pipelines.flows --bits 4`` runs once (against ``PREFECT_API_URL``, or
a temporary local server when it is unset); ``python -m pipelines.flows serve`` serves the flow
as a deployment, so runs with other ``bits``/``methods``/``seeds`` start from the Prefect UI
(one at a time: they share the workspace). The run's artifact ``fraqat-comparison`` holds the
stage outcomes, ``reports/comparison.md`` and the FID plot; ``fraqat-fid-plot`` the plot alone.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from fraqat import paths
from fraqat.io import atomic_path

# Stages whose commands run at the same time, at most; each gets its share of the CPU threads.
WORKERS = int(os.environ.get("FRAQAT_FLOW_WORKERS", min(4, os.cpu_count() or 1)))
_slots = threading.BoundedSemaphore(WORKERS)
FID_PLOT = paths.PLOTS / "fid.png"
_LOCK_MESSAGES = ("Unable to acquire lock", "is busy, it is being blocked by", "index.lock")
_ONE_LINE = re.compile(r"(fraqat [\w-]+|params\.yaml): ")  # how the CLI's user errors start
_OUTCOMES = (("Running stage", "ran"), ("is cached - skipping run", "restored from run-cache"),
             ("didn't change, skipping", "up to date"))


class StageError(RuntimeError):
    """A stage (or ``fraqat validate``) exited non-zero; not retried."""


class LockBusy(StageError):
    """DVC or git found a lock held by another process; transient, retried with a delay."""


def _env(repo: Path) -> dict[str, str]:
    """Subprocess environment: this interpreter's ``bin`` on ``PATH`` (``dvc``, ``fraqat``) and
    the repo first on ``PYTHONPATH``, so the code that runs is the code DVC hashed."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))
    return env


def _stream(cmd: list[str], repo: Path) -> tuple[int, str]:
    """Run ``cmd`` in ``repo``; every output line goes to the task's Prefect logger."""
    logger = get_run_logger()
    logger.info("$ %s", " ".join(cmd[2:] if cmd[0] == sys.executable else cmd))
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=repo, env=_env(repo), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # text mode splits on "\r" too: tqdm updates arrive as lines
            if line := line.rstrip():
                lines.append(line)
                logger.info(line)
    return proc.returncode, "\n".join(lines)


def _fail(what: str, rc: int, out: str) -> StageError:
    """The error for a failed command: its cause is the line before DVC's ``ERROR:`` line.

    Where that line is a stage's own one-line error (bad params, a bad file: what is wrong and
    what to do), it is the whole message, as the CLI printed it.
    """
    lines = out.strip().splitlines() or [""]
    end = max((i for i, line in enumerate(lines) if line.startswith("ERROR:")),
              default=len(lines) - 1)
    kind = LockBusy if any(m in out for m in _LOCK_MESSAGES) else StageError
    cause = lines[end - 1] if end > 0 else ""
    if _ONE_LINE.match(cause):
        return kind(cause)
    return kind(f"{what} exited with {rc}: " + " / ".join(lines[max(0, end - 1):end + 1]))


def _is_transient(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn``: retry a lock that was busy, nothing else."""
    try:
        state.result()
    except LockBusy:
        return True
    except BaseException:
        return False
    return False


@task(task_run_name="set params {overrides}", cache_policy=NO_CACHE)
def set_params(repo: str, overrides: dict[str, object]) -> None:
    """Write ``overrides`` into params.yaml with DVC's ``-S`` function, validated first.

    Keys whose value is already in the file are left alone, so an unchanged run does not
    rewrite (re-format) params.yaml.
    """
    import yaml
    from dvc.utils.hydra import apply_overrides

    params = Path(repo, "params.yaml")
    current = yaml.safe_load(params.read_text()) or {}
    changed = [f"{k}={json.dumps(v)}" for k, v in overrides.items() if current.get(k) != v]
    if not changed:
        return
    with atomic_path(params) as scratch:  # replaces params.yaml only once it validates
        shutil.copyfile(params, scratch)
        apply_overrides(scratch, changed)
        rc, out = _stream([sys.executable, "-m", "fraqat.cli", "validate", "--params",
                           str(scratch)], Path(repo))
        if rc:
            raise StageError(out.strip().splitlines()[-1].replace(str(scratch), "params.yaml"))


def stage_graph(repo: str | Path, targets: list[str] | None = None) -> dict[str, list[str]]:
    """DVC's stages (``name@item`` for matrix stages) -> their upstream stages, in run order.

    ``targets`` (stage names; ``train`` means every ``train@…``) keeps those stages and
    everything upstream of them.
    """
    import networkx as nx
    from dvc.repo import Repo

    root = Path(repo).resolve()

    def address(stage) -> str:  # what `dvc repro` accepts when run in the repo root
        rel = os.path.relpath(stage.path, root)
        return stage.name if rel == "dvc.yaml" else f"{rel}:{stage.name}"

    with Repo(str(root)) as dvc:
        graph = dvc.index.graph  # edges point from a stage to the stages it depends on
        names = {s: address(s) for s in graph if getattr(s, "cmd", None)}
        keep = set(names)
        if targets:
            wanted = {s for s, n in names.items() if n in targets or n.split("@")[0] in targets}
            missing = set(targets) - {x for s in wanted for x in (names[s], names[s].split("@")[0])}
            if missing:
                raise StageError(f"unknown stage(s): {', '.join(sorted(missing))} "
                                 f"(allowed: {', '.join(names.values())})")
            keep = {a for s in wanted for a in (s, *nx.descendants(graph, s))} & keep
        position = {s: i for i, s in enumerate(dvc.index.stages)}  # dvc.yaml order
        order = [s for s in nx.lexicographical_topological_sort(graph.reverse(copy=False),
                                                                position.__getitem__)
                 if s in keep]
        return {names[s]: [names[u] for u in graph.successors(s) if u in keep] for s in order}


def _repro(stage: str, repo: Path) -> str:
    # A plain function: tasks are pickled by value when served, a lock global must not be.
    with _slots:
        rc, out = _stream([sys.executable, "-m", "dvc", "--wait-for-lock", "repro",
                           "--single-item", stage], repo)
    if rc:
        raise _fail(f"dvc repro {stage}", rc, out)
    return next((label for marker, label in _OUTCOMES if marker in out), "done")


@task(task_run_name="dvc repro {stage}", retries=3, retry_delay_seconds=[5, 15, 45],
      retry_condition_fn=_is_transient, cache_policy=NO_CACHE)  # DVC does the caching
def repro_stage(stage: str, repo: str) -> str:
    """``dvc repro --single-item <stage>``; returns ran | restored from run-cache | up to date."""
    return _repro(stage, Path(repo))


@task(cache_policy=NO_CACHE)
def publish(repo: str, outcomes: dict[str, str], overrides: dict[str, object]) -> str:
    """Markdown artifact: the stage outcomes, reports/comparison.md and the FID plot."""
    root = Path(repo)
    given = ", ".join(f"`{k}={v}`" for k, v in overrides.items())
    md = ["# FraQAT pipeline run", "", f"Parameters: {given}", "",
          "| stage | outcome |", "|---|---|", *(f"| `{s}` | {o} |" for s, o in outcomes.items())]
    if (root / paths.COMPARISON_MD).exists():
        md += ["", (root / paths.COMPARISON_MD).read_text()]
    if (root / FID_PLOT).exists():
        uri = "data:image/png;base64," + base64.b64encode((root / FID_PLOT).read_bytes()).decode()
        md += ["", f"![FID]({uri})"]
        create_image_artifact(image_url=uri, key="fraqat-fid-plot",
                              description=f"{FID_PLOT} of this run")
    text = "\n".join(md)
    create_markdown_artifact(markdown=text, key="fraqat-comparison",
                             description=f"{paths.COMPARISON_MD} and stage outcomes")
    return text


# Threads only wait (on upstream tasks or a subprocess); ``_slots`` bounds the running stages.
@flow(name="fraqat-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=64))
def fraqat_pipeline(bits: float = 4, methods: list[str] | None = None,
                    seeds: list[int] | None = None, targets: list[str] | None = None,
                    repo: str = ".") -> dict[str, str]:
    """Run the DVC pipeline at ``bits`` for ``methods`` × ``seeds`` (None: keep params.yaml).

    ``targets`` restricts the run to those stages and their upstream; ``repo`` is the DVC repo.
    Returns each stage's outcome; fails if any stage failed.
    """
    root = str(Path(repo).resolve())
    overrides = {k: v for k, v in (("bits", bits), ("methods", methods), ("seeds", seeds))
                 if v is not None}
    set_params(root, overrides)
    futures: dict = {}
    for stage, upstream in stage_graph(root, targets).items():
        futures[stage] = repro_stage.submit(stage, root, wait_for=[futures[u] for u in upstream])
    wait(list(futures.values()))
    outcomes = {s: f.result() if f.state.is_completed() else f.state.name
                for s, f in futures.items()}
    publish(root, outcomes, overrides)
    failed = [s for s, f in futures.items() if not f.state.is_completed()]
    if failed:
        raise StageError(f"stages not completed: {', '.join(failed)}")
    return outcomes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.flows",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", choices=("run", "serve"), default="run",
                    help="run once (default) or serve a deployment for the Prefect UI")
    ap.add_argument("--bits", type=float, default=4, help="target weight bits (default 4)")
    ap.add_argument("--methods", nargs="+", help="default: params.yaml's")
    ap.add_argument("--seeds", nargs="+", type=int, help="default: params.yaml's")
    ap.add_argument("--targets", nargs="+", help="only these stages and their upstream")
    ap.add_argument("--repo", default=".", help="the DVC repo (default: .)")
    ap.add_argument("--name", default="fraqat", help="deployment name for serve")
    args = ap.parse_args(argv)
    # The importable module's flow, not ``__main__``'s copy: what serve pickles must refer
    # to ``pipelines.flows`` by name.
    from pipelines.flows import fraqat_pipeline

    if args.command == "serve":
        # limit=1: one workspace holds one params.yaml, so runs from the UI queue up.
        fraqat_pipeline.serve(name=args.name, limit=1,
                              parameters={"repo": str(Path(args.repo).resolve())})
        return
    outcomes = fraqat_pipeline(bits=args.bits, methods=args.methods, seeds=args.seeds,
                               targets=args.targets, repo=args.repo)
    print(json.dumps(outcomes, indent=1))


if __name__ == "__main__":
    main()
