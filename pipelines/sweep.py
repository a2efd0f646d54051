"""A grid over machines: Prefect workers run its points as DVC experiments.

The grid is the regime's or the ablation's (their cells, imported), × methods × seeds. Each
point is a flow run of the ``fraqat-sweep-point`` deployment on a Prefect work pool of type
``process``; any number of workers (``python -m pipelines.sweep worker``, one per machine, each
in its own clone) take them from the pool's ``cpu`` or ``cuda`` queue, run them as DVC
experiments and push them to the shared remotes (:mod:`pipelines.sweep_point`). The sweep
watches its child runs, submits a point again when its run failed, crashed or its worker went
silent, pulls the experiments (``dvc exp pull``) and renders the grid's own table from them,
as a file and as the sweep run's artifact.

    python -m pipelines.sweep deploy                  # the pool, its queues, the deployment
    python -m pipelines.sweep worker --queue cpu      # on each machine, in its clone
    python -m pipelines.sweep run --grid regime --cells w4-lr3e-3 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal
from uuid import UUID

import pandas as pd
import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType, WorkerStatus
from prefect.deployments import run_deployment
from prefect.states import Crashed

from pipelines.experiments import ablation, regime
from pipelines.experiments.ablation_report import cell_table, cells_markdown
from pipelines.sweep_point import (
    CLONE_ENV,
    ENTRYPOINT,
    PULL_STEPS,
    WORKER_LABEL,
    SweepError,
    check_clean,
    check_remotes,
    env,
    exp_names,
    sh,
    sweep_point,
)

POOL, DEPLOYMENT, QUEUES = "fraqat", "fraqat", ("cpu", "cuda")
Device = Literal["cpu", "cuda"]
GridName = Literal["regime", "ablation-quick", "ablation-full"]


@dataclass(frozen=True)
class Grid:
    """Cells (``-S`` overrides) on a base; ``split``: one experiment per (cell, method, seed),
    which the regime's per-run metrics allow; otherwise one per cell (the ablation compares
    the methods inside each experiment)."""

    cells: Mapping[str, Mapping[str, object]]
    base: Mapping[str, object]
    split: bool
    target: str | None


GRIDS: dict[str, Grid] = {
    "regime": Grid(regime.CELLS, regime.BASE, split=True, target="train"),
    "ablation-quick": Grid(ablation.GRIDS["quick"], ablation.BASE, split=False, target=None),
    "ablation-full": Grid(ablation.GRIDS["full"], ablation.BASE, split=False, target=None),
}


@dataclass(frozen=True)
class Point:
    name: str  # the experiment's name: a pure function of the point, so runs never double
    cell: str
    overrides: dict[str, object]


def _items(value: object) -> list:
    return list(yaml.safe_load(value) if isinstance(value, str) else value)  # type: ignore[arg-type]


def points(grid: str, cells: list[str] | None = None, methods: list[str] | None = None,
           seeds: list[int] | None = None, sets: Mapping[str, object] | None = None,
           device: str = "cpu") -> list[Point]:
    """The grid's points, overrides in ``dvc exp run -S`` order (base, seeds, cell, given)."""
    spec = GRIDS[grid]
    unknown = sorted(set(cells or []) - set(spec.cells))
    if unknown:
        raise SweepError(f"unknown cell(s) {', '.join(unknown)} of grid {grid} "
                         f"(allowed: {', '.join(spec.cells)})")
    out = []
    for cell in cells or list(spec.cells):
        sets_ = {**spec.base, **({"seeds": f"[{','.join(map(str, seeds))}]"} if seeds else {}),
                 **spec.cells[cell], **({"methods": f"[{','.join(methods)}]"} if methods else {}),
                 **(sets or {}), "device": device}
        if not spec.split:
            out.append(Point(cell, cell, sets_))
            continue
        for method in _items(sets_["methods"]):
            for seed in _items(sets_.get("seeds", "[0]")):
                out.append(Point(f"{cell}-{method}-s{seed}", cell,
                                 {**sets_, "methods": f"[{method}]", "seeds": f"[{seed}]"}))
    return out


def validate(repo: Path, pts: list[Point]) -> None:
    """Each point's parameters, set the way ``dvc exp run -S`` sets them on this clone's
    ``params.yaml`` (in a scratch copy), must pass the params schema: a bad value stops the
    sweep in one line before any run is submitted."""
    import shutil
    import tempfile

    from dvc.utils.hydra import apply_overrides

    from fraqat.errors import FraqatError
    from fraqat.params import load_params

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp, "params.yaml")
        for p in pts:
            shutil.copyfile(repo / "params.yaml", scratch)
            apply_overrides(str(scratch), [f"{k}={v}" for k, v in p.overrides.items()])
            try:
                load_params(scratch)
            except FraqatError as exc:
                raise SweepError(f"point {p.name}: {exc}") from None


def deploy(pool: str = POOL, name: str = DEPLOYMENT) -> str:
    """Create the ``process`` work pool and its device queues if missing, and (re)register the
    point deployment on it; returns the deployment's name for ``run_deployment``."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.utilities.callables import parameter_schema
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=pool, type="process",
                base_job_template=ProcessWorker.get_default_base_job_template()))
        for queue in QUEUES:
            try:
                client.create_work_queue(name=queue, work_pool_name=pool)
            except ObjectAlreadyExists:
                pass
        client.create_deployment(
            flow_id=client.create_flow_from_name(sweep_point.name), name=name,
            work_pool_name=pool, work_queue_name=QUEUES[0], entrypoint=ENTRYPOINT,
            pull_steps=PULL_STEPS, enforce_parameter_schema=True,
            parameter_openapi_schema=parameter_schema(sweep_point).model_dump_for_openapi(),
            description="One grid point of a sweep as a DVC experiment in the worker's clone.")
    return f"{sweep_point.name}/{name}"


def _silent(run: FlowRun, workers: dict) -> str | None:
    """Why ``run``'s worker is gone (offline, or no heartbeat for 3 intervals), else None."""
    labels = run.labels or {}
    name = labels.get(WORKER_LABEL) or labels.get("prefect.worker.name")
    if not name or run.state_type not in (StateType.PENDING, StateType.RUNNING):
        return None
    worker = workers.get(name)
    if worker is None or worker.status == WorkerStatus.OFFLINE:
        return f"worker {name} is offline"
    beat = worker.last_heartbeat_time
    limit = 3 * (worker.heartbeat_interval_seconds or 30)
    if beat and (datetime.now(timezone.utc) - beat).total_seconds() > limit:
        return f"worker {name} sent no heartbeat for {limit} s"
    return None


def watch(pts: list[Point], submit, pool: str, attempts: int, poll_s: float,
          timeout_s: float) -> tuple[list[str], dict[str, str]]:
    """Wait for every point's run; a run that failed, crashed or lost its worker is marked
    crashed and submitted again (at most ``attempts`` runs a point). Returns the finished
    points and, for the others, the last run's message."""
    logger = get_run_logger()
    runs = {p.name: submit(p, 1) for p in pts}
    tries = dict.fromkeys(runs, 1)
    done: list[str] = []
    failed: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while len(done) + len(failed) < len(pts) and time.monotonic() < deadline:
            time.sleep(poll_s)
            workers = {w.name: w for w in client.read_workers_for_work_pool(pool)}
            for p in pts:
                if p.name in done or p.name in failed:
                    continue
                run = client.read_flow_run(runs[p.name])
                if run.state_type == StateType.COMPLETED:
                    done.append(p.name)
                    continue
                gone = _silent(run, workers)
                if gone:
                    client.set_flow_run_state(run.id, Crashed(message=gone), force=True)
                elif run.state_type not in (StateType.FAILED, StateType.CRASHED):
                    continue
                why = gone or (run.state.message if run.state else None) or "failed"
                if tries[p.name] >= attempts:
                    failed[p.name] = str(why)
                    continue
                tries[p.name] += 1
                logger.warning("%s: %s; submitting it again (run %d of %d)", p.name, why,
                               tries[p.name], attempts)
                runs[p.name] = submit(p, tries[p.name])
    for name in runs:
        if name not in done and name not in failed:
            failed[name] = f"not finished in {timeout_s:g} s"
    return done, failed


def exp_show(repo: Path, rev: str) -> list[dict]:
    return json.loads(sh(repo, "dvc", "exp", "show", "--json", "--rev", rev,
                         what="dvc exp show"))


def table(grid: str, pts: list[Point], show: list[dict], rev: str,
          repo: Path | None = None) -> tuple[pd.DataFrame, str]:
    """The grid's table from the points' experiments of baseline ``rev`` (``dvc exp show
    --json``): a point counts once, whatever number of runs it took."""
    cell_of = {p.name: p.cell for p in pts}
    show = [{**b, "experiments": [{**e, "name": cell_of[e["name"]]}
                                  for e in b.get("experiments") or [] if e.get("name") in cell_of]}
            for b in show if b.get("rev") == rev]
    if GRIDS[grid].split:
        rows = regime.runs(show, repo)
        if rows.empty:
            return rows, "No finished points."
        frame = regime.summarize(rows)
        return frame, "\n".join([regime.verdict(frame), "", regime.table_markdown(frame)])
    exps = ablation.experiments(show, repo)
    if not exps:
        return pd.DataFrame(), "No finished points."
    frame = cell_table(exps)
    return frame, cells_markdown(frame)


def collect(repo: Path, grid: str, pts: list[Point], names: list[str], rev: str,
            git_remote: str, out: Path) -> str:
    """Pull the finished points' experiments (refs and metrics; ``dvc exp pull REMOTE NAME``
    then ``dvc exp apply NAME`` brings one's data) and write the table to ``out``."""
    if names:
        sh(repo, "dvc", "exp", "pull", "--no-cache", "--force", git_remote, *names,
           what=f"dvc exp pull {git_remote}")
    frame, md = table(grid, pts, exp_show(repo, rev), rev, repo)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / f"{grid}.csv", index=False)
    (out / f"{grid}.md").write_text(md + "\n")
    return md


@flow(name="fraqat-sweep", log_prints=True)
def fraqat_sweep(grid: GridName = "regime", cells: list[str] | None = None,
                 methods: list[str] | None = None, seeds: list[int] | None = None,
                 sets: dict[str, str] | None = None, device: Device = "cpu",
                 pool: str = POOL, deployment: str = DEPLOYMENT, git_remote: str = "origin",
                 attempts: int = 3, repo: str = ".", out: str = ".sweep",
                 poll_s: float = 5.0, timeout_s: float = 7 * 24 * 3600) -> str:
    """Run ``grid`` (its ``cells``, all by default) × ``methods`` × ``seeds`` with ``sets``
    (``-S`` overrides) on the workers of ``pool``'s ``device`` queue; collect the table.

    The points run on this clone's commit, which must be on ``git_remote``.

    Args:
        grid: whose cells: the regime map's or the schedule ablation's
        cells: a subset of the grid's cells (default: all)
        methods: the methods of every cell (default: the grid's)
        seeds: the seeds of every cell (default: the grid's)
        sets: more ``dvc exp run -S`` overrides for every point, e.g. train.steps: 800
        device: the pool's queue whose workers run the points; also sets -S device=
        pool: the Prefect work pool of type process
        deployment: the point deployment's name (python -m pipelines.sweep deploy)
        git_remote: where the experiments' refs meet (the DVC remote holds their data)
        attempts: runs a point may take (a crashed worker, a failure) before it is given up
        repo: this clone, where the table is collected
        out: the folder for the table, inside ``repo``
        poll_s: seconds between looks at the child runs
        timeout_s: give up on unfinished points after this long
    """
    root = Path(repo).resolve()
    check_remotes(root, git_remote)
    rev = sh(root, "git", "rev-parse", "HEAD").strip()
    sh(root, "git", "fetch", "-q", git_remote, what=f"git fetch {git_remote}")
    if not sh(root, "git", "branch", "-r", "--contains", rev).strip():
        raise SweepError(f"commit {rev[:12]} is not on the git remote {git_remote!r}: "
                         "push it before the sweep")
    pts = points(grid, cells, methods, seeds, sets, device)
    validate(root, pts)
    target = GRIDS[grid].target

    def submit(p: Point, attempt: int) -> UUID:
        child = run_deployment(
            f"{sweep_point.name}/{deployment}", timeout=0, work_queue_name=device,
            flow_run_name=p.name if attempt == 1 else f"{p.name} (run {attempt})",
            parameters={"name": p.name, "overrides": p.overrides, "rev": rev,
                        "git_remote": git_remote, "target": target})
        assert isinstance(child, FlowRun)  # the sync call returns the run itself
        return child.id

    done, failed = watch(pts, submit, pool, attempts, poll_s, timeout_s)
    md = collect(root, grid, pts, done, rev, git_remote, root / out)
    lost = "".join(f"\n- `{n}`: {why}" for n, why in failed.items())
    create_markdown_artifact(
        key="fraqat-sweep-table", description=f"{grid}: {len(done)} of {len(pts)} points",
        markdown=f"# Sweep {grid} on {rev[:12]}\n\n{len(done)} of {len(pts)} points "
                 f"finished.{lost}\n\n{md}\n")
    if failed:
        raise SweepError(f"{len(failed)} of {len(pts)} points did not finish: "
                         + "; ".join(f"{n}: {w}" for n, w in failed.items()))
    return md


def worker(pool: str, queue: str, git_remote: str, name: str | None) -> None:
    """``prefect worker start`` in this clone, one run at a time (one workspace), once the
    remotes answer; the deployment's pull step finds the clone through ``$FRAQAT_CLONE``."""
    root = Path.cwd()
    check_remotes(root, git_remote)
    check_clean(root)
    os.environ[CLONE_ENV] = str(root)
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
           "--work-queue", queue, "--limit", "1", *(["--name", name] if name else [])]
    os.execve(sys.executable, cmd, env(root))


def _sets(items: list[str]) -> dict[str, str]:
    bad = [s for s in items if "=" not in s]
    if bad:
        raise SweepError(f"--set {bad[0]}: expected KEY=VALUE (as dvc exp run -S)")
    return dict(s.split("=", 1) for s in items)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.sweep",
                                 description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd in ("deploy", "worker", "run", "collect", "serve"):
        p = sub.add_parser(cmd)
        p.add_argument("--pool", default=POOL)
        p.add_argument("--git-remote", default="origin")
        if cmd in ("run", "collect"):
            p.add_argument("--grid", choices=sorted(GRIDS), default="regime")
            p.add_argument("--cells", nargs="+")
            p.add_argument("--methods", nargs="+")
            p.add_argument("--seeds", nargs="+", type=int)
            p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
            p.add_argument("--device", choices=QUEUES, default="cpu")
            p.add_argument("--out", default=".sweep", help="where the table goes")
    sub.choices["worker"].add_argument("--queue", choices=QUEUES, default="cpu")
    sub.choices["worker"].add_argument("--name", help="worker name (default: Prefect's)")
    sub.choices["run"].add_argument("--attempts", type=int, default=3)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "deploy":
            print(f"deployment {deploy(args.pool)} on work pool {args.pool!r}")
        elif args.cmd == "worker":
            worker(args.pool, args.queue, args.git_remote, args.name)
        elif args.cmd == "serve":  # the sweep from the UI: runs here, in this clone
            fraqat_sweep.serve(name="fraqat", parameters={"repo": str(Path.cwd())})
        elif args.cmd == "run":  # bad input: one line before a flow run starts
            validate(Path.cwd(), points(args.grid, args.cells, args.methods, args.seeds,
                                        _sets(args.set), args.device))
            check_remotes(Path.cwd(), args.git_remote)
            print(fraqat_sweep(args.grid, args.cells, args.methods, args.seeds,
                               _sets(args.set), args.device, args.pool,
                               git_remote=args.git_remote, attempts=args.attempts,
                               out=args.out))
        else:
            root = Path.cwd()
            rev = sh(root, "git", "rev-parse", "HEAD").strip()
            pts = points(args.grid, args.cells, args.methods, args.seeds, _sets(args.set),
                         args.device)
            names = sorted(exp_names(root, args.git_remote, rev) & {p.name for p in pts})
            print(collect(root, args.grid, pts, names, rev, args.git_remote,
                          root / args.out))
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
