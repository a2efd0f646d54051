"""The whole regime in one call on the GPU machine: its CPU cells on the host's CPU cores and
its GPU cells on the GPU, at the same time, through the pipeline's own stages without DVC.

The CPU cells are :mod:`pipelines.experiments.regime`'s DVC experiments (``params.yaml`` with
the cell's ``-S`` overrides, ``device: cpu``); a one-value ``tune.lr_grid`` becomes
``train.lr`` with an empty grid, which gives every method the same peak rate without the
``tune`` runs (:func:`fraqat.train.student.peak_lr`). Every stage pins torch to one thread
(:mod:`fraqat.threads`), so a run's numbers do not depend on how many run beside it.
The GPU cells are :mod:`pipelines.experiments.regime_gpu`'s (``profiles/mnist-gpu.yaml``).
Each half is a :class:`~pipelines.experiments.regime_gpu.Runner` with its own jobs, scratch
folder and JSON (rewritten after every run), bounded by the same ``--budget-s``; both order
their runs seed-major so a budget cut leaves whole seeds.

    python -m pipelines.experiments.regime_device --out-dir $OUT --cpu-jobs 12 --gpu-jobs 4
    python -m pipelines.experiments.regime_device --tiny --out-dir /tmp/rd   # CPU, seconds
    python -m pipelines.experiments.regime_device --ingest cpu.json   # reports/regime's CPU
    python -m pipelines.experiments.regime render                      # regime.md again
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fraqat import profiles
from fraqat.io import write_text
from pipelines.experiments import regime, regime_gpu
from pipelines.experiments.grid import with_overrides

SEEDS = [0, 1, 2, 3, 4]
# one run of the default table's recipe (its tuned lr 3e-4), to compare with the committed
# reports/train/qat/s0.json that `dvc repro` wrote on another machine
CHECK = {"check-default-qat": {"train.lr": 3e-4, "tune.lr_grid": [], "methods": ["qat"],
                               "seeds": [0]}}
TINY_CPU = {k: v for k, v in regime_gpu.TINY.items() if not k.startswith("data")}


def cpu_cell(sets: Mapping[str, object]) -> dict[str, Any]:
    """A DVC experiment's ``-S`` overrides (values as YAML text) as the runner's overrides;
    a one-value ``tune.lr_grid`` is that value as ``train.lr`` with no tuning."""
    out: dict[str, Any] = {k: yaml.safe_load(v) if isinstance(v, str) else v
                           for k, v in sets.items()}
    grid: Any = out.pop("tune.lr_grid", None)
    if grid is not None:
        if len(grid) != 1:
            raise ValueError(f"a regime cell tunes over {grid}: only one fixed rate is allowed")
        out.update({"train.lr": grid[0], "tune.lr_grid": []})
    return out


CPU_CELLS = {name: cpu_cell(sets) for name, sets in regime.CELLS.items()}


def cpu_profile(seeds: list[int], base: Path = regime_gpu.ROOT / "params.yaml") -> dict:
    """``params.yaml`` with the regime's shared overrides (the four arms, every seed)."""
    return with_overrides(yaml.safe_load(base.read_text()),
                          {**cpu_cell(regime.BASE), "seeds": seeds, "device": "cpu"})


def ingest(cpu_json: Path, out: Path = regime.OUT) -> pd.DataFrame:
    """The CPU half's JSON into the CPU cells' files: its cells replace theirs in
    ``regime_runs.csv`` (per seed) and ``regime.csv`` (per cell and method), other cells
    stay; ``cpu.json`` says which machine and call produced them. The check cell stays in
    ``cpu.json`` only."""
    result = json.loads(cpu_json.read_text())
    df = regime.gpu_runs(result)
    df = df[df["cell"].isin(list(regime.CELLS))].reset_index(drop=True)
    new = list(dict.fromkeys(df["cell"]))
    out.mkdir(parents=True, exist_ok=True)
    table, csv, runs_csv = regime.summarize(df), out / "regime.csv", out / regime.RUNS_CSV.name
    if csv.exists():
        old = regime.read_table(csv)
        order = list(dict.fromkeys([*old["cell"], *new]))
        table = pd.concat([old[~old["cell"].isin(new)], table], ignore_index=True)
        table = table.sort_values("cell", key=lambda c: c.map(order.index), kind="stable")
    if runs_csv.exists():
        kept = pd.read_csv(runs_csv)
        df = pd.concat([kept[~kept["cell"].isin(new)], df], ignore_index=True)
    df.to_csv(runs_csv, index=False)
    regime.write_table(table.reset_index(drop=True), csv)
    write_text(out / regime.CPU_JSON.name, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return df


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Regime CPU cells on the host's cores and GPU "
                                             "cells on the GPU, in one call (no DVC).")
    ap.add_argument("--out-dir", type=Path, default=None, help="cpu.json and gpu.json")
    ap.add_argument("--cpu-cells", nargs="*", default=[*CPU_CELLS, *CHECK],
                    choices=[*CPU_CELLS, *CHECK])
    ap.add_argument("--gpu-cells", nargs="*", default=["w4-lr3e-3", "w3-outliers-lr3e-3"],
                    choices=list(regime_gpu.CELLS))
    ap.add_argument("--gpu-first", nargs="*", default=(), choices=list(regime_gpu.CELLS),
                    help="GPU cells whose runs go before the others'")
    ap.add_argument("--seeds", type=int, nargs="*", default=SEEDS)
    ap.add_argument("--cpu-jobs", type=int, default=12)
    ap.add_argument("--gpu-jobs", type=int, default=4)
    ap.add_argument("--budget-s", type=float, default=480.0)
    ap.add_argument("--gpu-skip-done", type=Path, default=None,
                    help="an earlier GPU call's JSON: its finished runs are not run again")
    ap.add_argument("--gpu-recheck", nargs=3, default=None, metavar=("CELL", "METHOD", "SEED"),
                    help="one finished run of --gpu-skip-done to run again (a merge check)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, both halves on the CPU")
    ap.add_argument("--ingest", type=Path, default=None,
                    help="write reports/regime's CPU files from this cpu.json instead of running")
    args = ap.parse_args(argv)
    if args.ingest:
        df = ingest(args.ingest)
        print(f"wrote {regime.OUT}/{{regime.csv,{regime.RUNS_CSV.name},{regime.CPU_JSON.name}}}"
              f" ({df['cell'].nunique()} cells, {len(df)} runs)")
        return 0
    if args.out_dir is None:
        ap.error("--out-dir is required to run (where cpu.json and gpu.json go)")
    cpu = cpu_profile(args.seeds)
    gpu = profiles.merged(regime_gpu.PROFILE)
    gpu["seeds"] = args.seeds
    if args.tiny:
        cpu = with_overrides(cpu, {**TINY_CPU, "seeds": args.seeds})
        gpu = with_overrides(gpu, {**regime_gpu.TINY, "seeds": args.seeds})
    skip = regime_gpu.done_runs(args.gpu_skip_done)
    if args.gpu_recheck:
        skip -= {(args.gpu_recheck[0], args.gpu_recheck[1], int(args.gpu_recheck[2]))}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cells = {**CPU_CELLS, **CHECK}
    with tempfile.TemporaryDirectory(prefix="regime-device-") as tmp:
        work = args.work or Path(tmp)
        for half in ("cpu", "gpu"):
            (work / half / "logs").mkdir(parents=True, exist_ok=True)
        runners = [regime_gpu.Runner(cpu, {c: cells[c] for c in args.cpu_cells}, work / "cpu",
                                     args.out_dir / "cpu.json", args.budget_s, args.cpu_jobs)]
        if args.gpu_cells:
            runners.append(regime_gpu.Runner(
                gpu, {c: regime_gpu.CELLS[c] for c in args.gpu_cells}, work / "gpu",
                args.out_dir / "gpu.json", args.budget_s, args.gpu_jobs, skip,
                tuple(args.gpu_first)))
        with ThreadPoolExecutor(len(runners)) as pool:
            results = list(pool.map(lambda r: r.run(), runners))
    return 0 if all(any(x["status"] == "ok" for x in r["runs"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
