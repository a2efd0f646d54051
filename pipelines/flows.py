"""Prefect flow over the DVC pipeline: each DVC stage is one Prefect task that runs it THROUGH DVC.

Every task calls ``dvc repro --single-item <stage>`` (a subprocess), so execution, caching
(cache + run-cache) and lineage (``dvc.lock``) stay DVC's; the flow re-implements no stage.
The task graph is DVC's own graph (``dvc.repo.Repo(...).index.graph``), so new stages and the
per-method ``train@<method>`` / ``evaluate@<method>`` stages appear without edits here.

Parameters. None means "as in params.yaml". Values that differ (``bits``, ``methods``,
``seeds``, a ``profile``, ``overrides`` as ``key=value``) are validated against the params
schema before anything runs, then run as a DVC experiment in a scratch copy
(:mod:`pipelines.workspace`): params.yaml and the committed reports stay as they are. Only
``write_params`` writes them into params.yaml (DVC's ``-S`` function) and runs in the
workspace.

Concurrency: stage-level calls in one workspace, not the experiment queue. DVC releases the
repo lock while a stage's command runs (``dvc/stage/run.py``: ``unlocked_repo(cmd_run)``) and
guards the stage's deps/outs with per-path read/write locks, so stages with no path in
conflict -- the ``train@<method>`` branches, ``classifier``, the ``evaluate@<method>`` stages --
run at the same time; only DVC's short bookkeeping is serialized on the repo lock, which
``dvc --wait-for-lock`` waits for. Each call is its own process (the lock is a per-process
file lock). At most ``FRAQAT_FLOW_WORKERS`` stage commands (default ``min(4, cores)``) run at
once, each with ``cores // workers`` OpenMP threads unless ``OMP_NUM_THREADS`` is set, and as
many run workers (``FRAQAT_JOBS``, :mod:`fraqat.jobs`) unless that is set: concurrent stages
times their pools stay within the cores. A task
that meets a busy lock fails as :class:`LockBusy` and is retried with a delay; a stage that
fails for real is not retried, and its downstream stages do not start.

Entry points: ``python -m pipelines.flows [--profile tiny] [--bits 3]`` runs once (against
``PREFECT_API_URL``, or a temporary local server when it is unset); ``python -m pipelines.flows
serve`` serves the flow as a deployment whose run form shows these typed parameters. The flow
run carries a progress artifact and the comparison, FID, training-curve and sample artifacts.
"""

# No ``from __future__ import annotations``: a served run rebuilds the parameter model from
# these annotations, which must be objects, not strings.
import argparse
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from fraqat import profiles
from fraqat.errors import ParamsError
from fraqat.jobs import JOBS_ENV
from fraqat.params import TRAINED_METHODS
from pipelines import workspace
from pipelines.run_artifacts import Progress, publish

# Stages whose commands run at the same time, at most; each gets its share of the CPU threads.
WORKERS = int(os.environ.get("FRAQAT_FLOW_WORKERS", min(4, os.cpu_count() or 1)))
_slots = threading.BoundedSemaphore(WORKERS)
_LOCK_MESSAGES = ("Unable to acquire lock", "is busy, it is being blocked by", "index.lock")
_ONE_LINE = re.compile(r"(fraqat [\w-]+|params\.yaml): ")  # how the CLI's user errors start
_OUTCOMES = (("Running stage", "ran"), ("is cached - skipping run", "restored from run-cache"),
             ("didn't change, skipping", "up to date"))

Method = Literal[TRAINED_METHODS]  # type: ignore[valid-type]
Profile = Literal[tuple(profiles.names())]  # type: ignore[valid-type]


class StageError(RuntimeError):
    """A stage exited non-zero; not retried."""


class LockBusy(StageError):
    """DVC or git found a lock held by another process; transient, retried with a delay."""


def _env(repo: Path) -> dict[str, str]:
    """Subprocess environment: this interpreter's ``bin`` on ``PATH`` (``dvc``, ``fraqat``) and
    the repo first on ``PYTHONPATH``, so the code that runs is the code DVC hashed."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    share = str(max(1, (os.cpu_count() or 1) // WORKERS))
    env.setdefault("OMP_NUM_THREADS", share)
    env.setdefault(JOBS_ENV, share)  # each stage's pool of seeds / grid points
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


@task(retries=3, retry_delay_seconds=[5, 15, 45], retry_condition_fn=_is_transient,
      cache_policy=NO_CACHE)  # DVC does the caching
def repro_stage(stage: str, repo: str) -> str:
    """``dvc repro --single-item <stage>``; returns ran | restored from run-cache | up to date."""
    return _repro(stage, Path(repo))


def run_stages(repo: Path, targets: list[str] | None) -> dict[str, str]:
    """Submit every stage after its upstream; each task is named by its stage from creation
    (pending ones too); the progress artifact moves as stages finish."""
    graph = stage_graph(repo, targets)
    progress = Progress(len(graph))
    futures: dict = {}
    for stage, upstream in graph.items():
        named = repro_stage.with_options(name=f"dvc repro {stage}",
                                         task_run_name=f"dvc repro {stage}")
        futures[stage] = named.submit(stage, str(repo), wait_for=[futures[u] for u in upstream])
    stage_of = {id(f): s for s, f in futures.items()}
    for done in as_completed(list(futures.values())):
        try:
            outcome = done.result()
        except Exception:  # the stage failed; run_stages' caller reports which
            outcome = "failed"
        progress.step(stage_of[id(done)], str(outcome))
    return {s: f.result() if f.state.is_completed() else f.state.name
            for s, f in futures.items()}


# Threads only wait (on upstream tasks or a subprocess); ``_slots`` bounds the running stages.
@flow(name="fraqat-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=64))
def fraqat_pipeline(
    bits: Annotated[float | None, Field(ge=2, le=16)] = None,
    methods: list[Method] | None = None,
    seeds: list[Annotated[int, Field(ge=0)]] | None = None,
    profile: Profile | None = None,
    overrides: list[str] | None = None,
    write_params: bool = False,
    targets: list[str] | None = None,
    repo: str = ".",
) -> dict | State:
    """Run the DVC pipeline; values that differ from params.yaml run as a DVC experiment.

    Returns the stage outcomes and the experiment's name (None when it ran in the workspace).

    Args:
        bits: Target weight bits, 2 to 16, fractional allowed (4 = W4A8). Empty: params.yaml's.
        methods: Trained methods to compare (the train and evaluate matrix). Empty:
            params.yaml's.
        seeds: Training seeds; each method x seed is one run. Empty: params.yaml's.
        profile: An override file from profiles/ (tiny: a 2-minute smoke run on the CPU that
            gives no verdict). Empty: none.
        overrides: More params as key=value, as `dvc exp run -S` takes them (e.g.
            train.steps=100).
        write_params: Off (default): values that differ from params.yaml run as a DVC
            experiment in a scratch copy, params.yaml unchanged. On: write them into
            params.yaml and run in the workspace.
        targets: Only these stages and their upstream (e.g. teacher, train). Empty: all.
        repo: The DVC repository (a served deployment fixes it).
    """
    logger = get_run_logger()
    root = Path(repo).resolve()
    try:
        values = profiles.requested(bits, methods, seeds, profile, overrides, root)
        params = workspace.check(root, values)
    except ParamsError as exc:
        return Failed(message=str(exc))  # one line in the UI and the log, no traceback
    asked = workspace.describe(values)
    name = f"{profile or 'flow'}-{flow_run.get_name() or 'run'}" if values else None
    try:
        if values and not write_params:
            with workspace.scratch_copy(root) as work:
                workspace.write_params(work, values)
                outcomes = run_stages(work, targets)
                publish(work, f"DVC experiment `{name}` (a scratch copy; params.yaml unchanged)",
                        asked, outcomes, params.smoke)
                if all(o in {"ran", "restored from run-cache", "up to date", "done"}
                       for o in outcomes.values()):
                    workspace.save_experiment(work, str(name))
        else:
            if values:
                workspace.write_params(root, values)
            outcomes = run_stages(root, targets)
            publish(root, "the workspace", asked, outcomes, params.smoke)
            name = None
    except (StageError, RuntimeError) as exc:
        return Failed(message=str(exc))
    if params.smoke:
        logger.info("smoke run: no verdict (toy sizes check the plumbing, not the method)")
    failed = [s for s, o in outcomes.items() if o not in {"ran", "restored from run-cache",
                                                           "up to date", "done"}]
    if failed:
        return Failed(message=f"stages not completed: {', '.join(failed)}")
    return {"experiment": name, "stages": outcomes}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipelines.flows",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", choices=("run", "serve"), default="run",
                    help="run once (default) or serve a deployment for the Prefect UI")
    ap.add_argument("--bits", type=float, help="target weight bits (default: params.yaml's)")
    ap.add_argument("--methods", nargs="+", help="default: params.yaml's")
    ap.add_argument("--seeds", nargs="+", type=int, help="default: params.yaml's")
    ap.add_argument("--profile", help=f"override file in profiles/ ({', '.join(profiles.names())})")
    ap.add_argument("--set", nargs="+", dest="overrides", metavar="KEY=VALUE",
                    help="more params, as dvc exp run -S takes them")
    ap.add_argument("--write-params", action="store_true",
                    help="write the values into params.yaml (default: run a DVC experiment)")
    ap.add_argument("--targets", nargs="+", help="only these stages and their upstream")
    ap.add_argument("--dry-run", action="store_true",
                    help="check the inputs and plan GPU memory, disk and hours; run nothing")
    ap.add_argument("--repo", default=".", help="the DVC repo (default: .)")
    ap.add_argument("--name", default="fraqat", help="deployment name for serve")
    return ap


def dry_run(root: Path, profile: str | None, overrides: list[str]) -> int:
    """``fraqat plan`` on the run's values: inputs checked, needs printed, exit code 0 or 2."""
    cmd = [sys.executable, "-m", "fraqat.cli", "plan", "--params", str(root / "params.yaml")]
    cmd += [*(["--profile", profile] if profile else []), *(["--set", *overrides]
                                                             if overrides else [])]
    return subprocess.run(cmd, cwd=root).returncode


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    root = Path(args.repo).resolve()
    # The importable module's flow, not ``__main__``'s copy: what serve pickles must refer
    # to ``pipelines.flows`` by name.
    from pipelines.flows import fraqat_pipeline

    if args.command == "serve":
        # limit=1: runs that write params.yaml share the workspace, so runs queue up.
        fraqat_pipeline.serve(name=args.name, limit=1, parameters={"repo": str(root)})
        return
    try:  # refuse bad values before a flow run exists
        values = profiles.requested(args.bits, args.methods, args.seeds, args.profile,
                                     args.overrides, root)
        params = workspace.check(root, values)
        stage_graph(root, [t for t in args.targets or [] if "@" not in t] or None)
    except (ParamsError, StageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.dry_run:
        raise SystemExit(dry_run(root, args.profile, [f"{k}={json.dumps(v)}" for k, v in
                                                      values.items()]))
    state = fraqat_pipeline(bits=args.bits, methods=args.methods, seeds=args.seeds,
                            profile=args.profile, overrides=args.overrides,
                            write_params=args.write_params, targets=args.targets,
                            repo=str(root), return_state=True)
    if not state.is_completed():
        print(f"error: {state.message}", file=sys.stderr)
        raise SystemExit(1)
    result = state.result()
    print(json.dumps(result["stages"], indent=1))
    if result["experiment"]:
        print(f"experiment {result['experiment']} saved; params.yaml unchanged. Compare: "
              f"python -m pipelines.tools.exps; take its results: dvc exp apply "
              f"{result['experiment']}")
    if params.smoke:
        print("smoke run: no verdict (toy sizes check the plumbing, not the method)")


if __name__ == "__main__":
    main()
