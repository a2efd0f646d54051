"""The paper's regime on the GPU machine, through the pipeline's own stages, without DVC.

The GPU machine has no DVC, so this does what ``dvc repro`` would for a few regime cells: it
writes params.yaml with ``profiles/mnist-gpu.yaml`` and each cell's overrides into a scratch
project and runs ``python -m fraqat.cli <stage>`` there as subprocesses. Cells that share a
teacher (same ``data``/``pretrain``/``outliers``/``calibration``) share one chain
``prepare → pretrain → calibrate → teacher``, as DVC's cache would; each cell then gets its own
project (the chain's ``data/`` entries linked in) and runs ``train`` for every method × seed,
``jobs`` at a time (small models leave one GPU mostly idle, so runs overlap). ``tune`` is
skipped: ``tune.lr_grid: []`` puts every method at the cell's ``train.lr``, the same rate a
one-value grid would choose. ``evaluate`` is not run: the held-out loss is the train stage's
probe at the target bits, as in the CPU cells.

Runs go seed-major (every cell's seed 0, then seed 1, …) so a budget cut leaves whole seeds.
``--budget-s`` bounds the wall time: a run that cannot finish in the time left (judged by the
slowest finished run) is not started, a running one is killed at the deadline; the JSON is
rewritten after every run, so whatever finished is kept.

    python -m pipelines.experiments.regime_gpu --out $OUT/gpu.json   # GPU machine, repo root
    python -m pipelines.experiments.regime_gpu --tiny --out /tmp/gpu.json   # the same, CPU
    python -m pipelines.experiments.regime_gpu --merge a.json b.json --out reports/regime/gpu.json
    python -m pipelines.experiments.regime render   # adds it to reports/regime

``--merge`` joins the JSON of several calls (one device call is limited to 10 minutes): runs
are keyed by (cell, method, seed), a finished run wins over a skipped one, and the teachers
must agree, since each call pretrains them again from the same seed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import yaml

from fraqat import paths, profiles
from pipelines.experiments.grid import OUTLIERS, with_overrides

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "profiles" / "mnist-gpu.yaml"
CELLS: dict[str, dict[str, object]] = {
    "w4-lr3e-3": {"bits": 4, "train.lr": 3e-3},
    "w3-outliers-lr3e-3": {"bits": 3, **OUTLIERS, "train.lr": 3e-3},
    "w4-lr1e-2": {"bits": 4, "train.lr": 1e-2},
    "w4-lr1e-3": {"bits": 4, "train.lr": 1e-3},
    "w3-outliers-lr1e-3": {"bits": 3, **OUTLIERS, "train.lr": 1e-3},
    # a 4.8x larger teacher (51.5 M parameters), pretrained twice as long
    "w4-lr1e-3-large": {"bits": 4, "train.lr": 1e-3, "pretrain.width": 768,
                        "pretrain.layers": 5, "pretrain.heads": 12, "pretrain.steps": 4000},
}
DEFAULT_CELLS = ("w4-lr3e-3", "w3-outliers-lr3e-3", "w4-lr1e-2")
TEACHER_KEYS = ("model", "device", "data", "pretrain", "outliers", "calibration")
CHAIN = ("prepare", "pretrain", "calibrate", "teacher")
# --tiny: the same cells and code path at sizes that run on 2 CPU cores in seconds
TINY = {"device": "cpu", "seeds": [0], "methods": ["qat", "fraqat-late"],
        "pretrain.width": 32, "pretrain.layers": 1, "pretrain.heads": 2,
        "pretrain.steps": 20, "pretrain.batch_size": 32,
        "calibration.num_samples": 128, "calibration.validation_samples": 32,
        "train.steps": 20, "train.batch_size": 32, "train.probe_every": 10,
        "train.probe_samples": 32}
TINY_CELLS = ("w4-lr3e-3", "w3-outliers-lr3e-3")
RUN_KEYS = ("final_target_loss", "max_spike", "max_spike_step", "first_update_spike",
            "stage_start_spike", "steady_spike", "diverged", "final_loss", "lr", "steps",
            "wall_seconds")


def teacher_key(params: dict) -> str:
    """What the chain's outputs depend on: cells with the same key share one teacher."""
    return json.dumps({k: params.get(k) for k in TEACHER_KEYS}, sort_keys=True)


class Runner:
    def __init__(self, profile: dict, cells: dict[str, dict], work: Path, out: Path,
                 budget_s: float, jobs: int, skip: frozenset[tuple] = frozenset(),
                 first: tuple[str, ...] = ()):
        """``skip``: (cell, method, seed) runs not to start (finished in an earlier call);
        ``first``: cells whose runs all go before the others' (each group seed-major)."""
        self.work, self.out, self.jobs = work, out, jobs
        self.skip, self.first = skip, first
        self.deadline = time.monotonic() + budget_s
        self.params = {c: with_overrides(profile, o) for c, o in cells.items()}
        keys = list(dict.fromkeys(teacher_key(p) for p in self.params.values()))
        self.group = {c: f"teacher-{keys.index(teacher_key(p))}" for c, p in self.params.items()}
        self.lock = threading.Lock()
        self.result: dict = {
            "device": device_name(profile.get("device", "cpu")), "torch": torch_version(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "budget_s": budget_s, "jobs": jobs, "cells": cells, "cell_order": list(cells),
            "profile": {k: profile[k] for k in ("bits", "act_bits", "methods", "seeds", "data",
                                                "pretrain", "train", "quant", "schedule")},
            "teachers": {}, "runs": [], "stages": [], "complete": False}
        self.started = time.monotonic()

    # -- subprocesses ------------------------------------------------------------------------
    def stage(self, project: Path, args: list[str], label: str) -> tuple[str, float]:
        """Run one ``fraqat`` stage in ``project``; ('ok' | 'failed' | 'timeout' |
        'skipped', seconds). Its output goes to ``work/logs/<label>.log``."""
        left = self.deadline - time.monotonic()
        log = self.work / "logs" / f"{label}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        env.setdefault("OMP_NUM_THREADS", "1")  # tiny tensors on the CPU side; jobs overlap
        start, status = time.monotonic(), "skipped"
        with log.open("w") as fh:
            try:
                if left > 0:
                    rc = subprocess.run([sys.executable, "-m", "fraqat.cli", *args],
                                        cwd=project, env=env, stdout=fh,
                                        stderr=subprocess.STDOUT, timeout=left).returncode
                    status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                status = "timeout"
        seconds = time.monotonic() - start
        record = {"label": label, "status": status, "seconds": round(seconds, 2)}
        if status in ("failed", "timeout"):  # the JSON is what comes back from the machine
            record["log_tail"] = log.read_text(errors="replace").strip().splitlines()[-8:]
            print(f"[{self.elapsed():6.1f}s] {label}: {status}: "
                  f"{' | '.join(record['log_tail'][-3:])}", flush=True)
        with self.lock:
            self.result["stages"].append(record)
        return status, seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def save(self) -> None:
        with self.lock:
            self.result["elapsed_s"] = round(self.elapsed(), 1)
            tmp = self.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.result, indent=2, sort_keys=True) + "\n")
            tmp.replace(self.out)

    # -- the two phases ----------------------------------------------------------------------
    def chain(self, group: str) -> bool:
        project = self.work / group
        project.mkdir(parents=True, exist_ok=True)
        cell = next(c for c, g in self.group.items() if g == group)
        params = self.params[cell]  # any cell of the group: they agree on TEACHER_KEYS
        params_file = project / "params.yaml"
        cached = params_file.exists() and \
            teacher_key(yaml.safe_load(params_file.read_text())) == teacher_key(params) and \
            (project / "reports" / "teacher.json").exists() and \
            (project / "data" / "teacher" / "fraqat.json").exists()
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        for stage in () if cached else CHAIN:
            status, seconds = self.stage(project, [stage], f"{group}-{stage}")
            print(f"[{self.elapsed():6.1f}s] {group} {stage}: {status} ({seconds:.1f} s)",
                  flush=True)
            if status != "ok":
                return False
        if cached:
            print(f"[{self.elapsed():6.1f}s] {group}: teacher chain kept from an earlier call "
                  f"in {project}", flush=True)
        report = json.loads((project / "reports" / "teacher.json").read_text())
        meta = json.loads((project / "data" / "teacher" / "fraqat.json").read_text())
        with self.lock:
            self.result["teachers"][group] = {
                "cells": [c for c, g in self.group.items() if g == group],
                "pretrain": params["pretrain"], "outliers": params["outliers"],
                "data": params["data"], "num_params": teacher_params(project),
                **{k: v for k, v in report.items() if k != "layers"},
                **{k: meta[k] for k in ("final_loss", "train_seconds", "steps") if k in meta}}
        self.save()
        return True

    def cell_project(self, cell: str) -> Path:
        """The cell's own project: its params.yaml, the chain's data/ entries linked in."""
        project = self.work / cell
        (project / "data").mkdir(parents=True, exist_ok=True)
        (project / "reports").mkdir(exist_ok=True)
        source = self.work / self.group[cell]
        for entry in (source / "data").iterdir():
            link = project / "data" / entry.name
            if not link.exists():
                link.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
        (project / "params.yaml").write_text(yaml.safe_dump(self.params[cell], sort_keys=False))
        return project

    def train(self, cell: str, method: str, seed: int) -> None:
        label = f"{cell}-{method}-s{seed}"
        with self.lock:
            done = [r["seconds"] for r in self.result["runs"] if r["status"] == "ok"]
        need = max(done) if done else 0.0
        if self.deadline - time.monotonic() < need:
            status, seconds = "skipped", 0.0  # would not finish in the time left
        else:
            status, seconds = self.stage(self.work / cell, ["train", "--method", method,
                                                            "--seed", str(seed)], label)
        row = {"cell": cell, "method": method, "seed": seed, "status": status,
               "seconds": round(seconds, 2), "teacher": self.group[cell]}
        metrics = self.work / cell / paths.train_metrics(method, seed)
        if status == "ok":
            m = json.loads(metrics.read_text())
            row.update({k: m.get(k) for k in RUN_KEYS})
        print(f"[{self.elapsed():6.1f}s] {label}: {status} ({seconds:.1f} s)"
              + (f", held-out loss {row['final_target_loss']:.5f}, spike "
                 f"{row['max_spike']:.1f}x" if status == "ok" else ""), flush=True)
        with self.lock:
            self.result["runs"].append(row)
        self.save()

    def run(self) -> dict:
        groups = list(dict.fromkeys(self.group.values()))
        print(f"{len(self.params)} cells, {len(groups)} teachers, device "
              f"{self.result['device']}, budget {self.deadline - time.monotonic():.0f} s, "
              f"{self.jobs} jobs", flush=True)
        self.save()
        with ThreadPoolExecutor(max(1, min(self.jobs, len(groups)))) as pool:
            ready = dict(zip(groups, pool.map(self.chain, groups), strict=True))
        cells = [c for c in self.params if ready[self.group[c]]]
        for cell in cells:
            self.cell_project(cell)
        seeds = sorted({s for c in cells for s in self.params[c]["seeds"]})
        todo = sorted(((c, m, s) for s in seeds for c in cells
                       for m in self.params[c]["methods"]
                       if s in self.params[c]["seeds"] and (c, m, s) not in self.skip),
                      key=lambda job: (job[0] not in self.first, job[2]))  # stable: seed-major
        with ThreadPoolExecutor(max(1, self.jobs)) as pool:
            list(pool.map(lambda job: self.train(*job), todo))
        runs = self.result["runs"]
        self.result["complete"] = (all(ready.values()) and len(runs) == len(todo)
                                   and all(r["status"] == "ok" for r in runs))
        self.save()
        ok = [r["seconds"] for r in runs if r["status"] == "ok"]
        print(f"done in {self.elapsed():.1f} s: {len(ok)}/{len(todo)} runs ok"
              + (f", median run {statistics.median(ok):.1f} s" if ok else "")
              + f" -> {self.out}", flush=True)
        return self.result


def device_name(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores{cpu_model()})"


def cpu_model() -> str:
    """``, <model name>`` from /proc/cpuinfo where it has one (which CPU produced a run)."""
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in
             (info.read_text().splitlines() if info.exists() else [])
             if line.startswith("model name")]
    return f", {names[0]}" if names else ""


def done_runs(path: Path | None) -> frozenset[tuple]:
    """(cell, method, seed) of the finished runs in an earlier call's JSON."""
    if not path:
        return frozenset()
    return frozenset((r["cell"], r["method"], r["seed"])
                     for r in json.loads(path.read_text())["runs"] if r["status"] == "ok")


def torch_version() -> str:
    import torch

    return torch.__version__


def teacher_params(project: Path) -> int:
    """Parameter count of the chain's teacher transformer (its safetensors header)."""
    import math

    from safetensors import safe_open

    path = project / "data" / "teacher" / "transformer" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(path), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def merge(results: list[dict]) -> dict:
    """One result from several calls' JSON (each may itself be a merge); a run finished twice
    must agree (same seed, same teacher: the runner is deterministic on one device), and so
    must a teacher two calls both pretrained. Cells, teachers and methods are the union."""
    if not results:
        raise ValueError("nothing to merge")
    teachers: dict[str, dict] = {}
    for r in results:
        for name, t in r["teachers"].items():
            mine = teachers.setdefault(name, dict(t))
            if mine.get("final_loss") != t.get("final_loss"):
                raise ValueError(f"teacher {name!r} differs between the merged calls "
                                 f"(final loss {mine.get('final_loss')} vs {t.get('final_loss')})")
            mine["cells"] = list(dict.fromkeys([*mine.get("cells", []), *t.get("cells", [])]))
    runs: dict[tuple, dict] = {}
    for r in results:
        for run in r["runs"]:
            key = (run["cell"], run["method"], run["seed"])
            old = runs.get(key)
            if old and old["status"] == "ok" and run["status"] == "ok" and \
                    old["final_target_loss"] != run["final_target_loss"]:
                raise ValueError(f"run {key} finished twice with different losses")
            if not old or old["status"] != "ok":
                runs[key] = run
    union = lambda key: list(dict.fromkeys(x for r in results for x in r.get(key) or []))  # noqa: E731
    out = dict(results[0])
    out.update(runs=sorted(runs.values(), key=lambda x: (x["seed"], x["cell"], x["method"])),
               teachers=teachers, cell_order=union("cell_order"),
               cells={k: v for r in results for k, v in r.get("cells", {}).items()},
               profile={**results[0].get("profile", {}), "methods": list(dict.fromkeys(
                   m for r in results for m in r.get("profile", {}).get("methods", [])))},
               calls=[c for r in results for c in r.get("calls") or
                      [{k: r[k] for k in ("started", "elapsed_s", "jobs", "budget_s")}]],
               elapsed_s=sum(r["elapsed_s"] for r in results),
               complete=all(run["status"] == "ok" for run in runs.values()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Regime cells on the GPU machine through the "
                                             "pipeline's stages (no DVC).")
    ap.add_argument("--out", type=Path, required=True, help="JSON written after every run")
    ap.add_argument("--profile", type=Path, default=PROFILE)
    ap.add_argument("--cells", nargs="*", default=None, choices=list(CELLS))
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="default: the profile's")
    ap.add_argument("--methods", nargs="*", default=None, help="default: the profile's")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="wall-time bound of the whole run (default 480 s)")
    ap.add_argument("--jobs", type=int, default=6, help="train runs at once (default 6)")
    ap.add_argument("--work", type=Path, default=None,
                    help="scratch dir (default: a temp dir); a teacher chain an earlier call "
                         "finished there with the same params is kept")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (tests)")
    ap.add_argument("--skip-done", type=Path, default=None,
                    help="an earlier call's JSON: its finished runs are not run again")
    ap.add_argument("--first", nargs="*", default=(), choices=list(CELLS),
                    help="cells whose runs go before the others'")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="join these calls' JSON into --out instead of running")
    args = ap.parse_args(argv)
    if args.merge:
        merged = merge([json.loads(p.read_text()) for p in args.merge])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
        ok = sum(r["status"] == "ok" for r in merged["runs"])
        print(f"merged {len(args.merge)} calls: {ok}/{len(merged['runs'])} runs ok -> {args.out}")
        return 0
    profile = profiles.merged(args.profile)
    if args.tiny:
        profile = with_overrides(profile, TINY)
    if args.seeds:
        profile["seeds"] = args.seeds
    if args.methods:
        profile["methods"] = args.methods
    names = args.cells or list(TINY_CELLS if args.tiny else DEFAULT_CELLS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="regime-gpu-") as tmp:
        work = args.work or Path(tmp)
        (work / "logs").mkdir(parents=True, exist_ok=True)
        result = Runner(profile, {c: CELLS[c] for c in names}, work, args.out,
                        args.budget_s, args.jobs, done_runs(args.skip_done),
                        tuple(args.first)).run()
    return 0 if any(r["status"] == "ok" for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
