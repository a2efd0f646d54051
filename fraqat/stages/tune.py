"""Stage ``tune``: each method's peak learning rate, chosen on the validation split.

The validation split is train-split images that QAT never trains on (``fraqat calibrate``);
the held-out split that the report scores is never read here.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

from fraqat import jobs, paths
from fraqat.backends import backend_of
from fraqat.errors import FraqatError
from fraqat.io import write_json
from fraqat.models.registry import load_teacher
from fraqat.params import Params
from fraqat.train import distributed
from fraqat.train.student import choose_lr, train_student, tuned_methods

log = logging.getLogger(__name__)
DISTRIBUTED = True  # train.processes > 1 runs this stage under torchrun (fraqat.train.launch)


def run(params: Params) -> None:
    """Train every tuned method once per ``tune.lr_grid`` value (seed ``tune.seed``, budget
    ``tune.steps`` or ``train.steps``), the grid's points in parallel workers
    (:mod:`fraqat.jobs`); keep the lr with the lowest validation loss at the target bits.
    Writes ``reports/tune.json`` only when every run has finished."""
    grid, methods = list(params.tune.lr_grid), tuned_methods(params)
    steps = params.tune.steps or params.train.steps
    tuned = params.model_copy(update={"train": params.train.model_copy(update={"steps": steps})})
    out: dict = {"grid": grid, "steps": steps, "seed": params.tune.seed,
                 "lr_schedule": params.train.lr_schedule,
                 "validation_samples": params.calibration.validation_samples,
                 "losses": {}, "stability": {}, "chosen": {}}
    if not grid:
        out["chosen"] = {m: params.train.lr for m in methods}
        write_json(paths.TUNE, out)
        return
    distributed.init_from_env(params.device)  # under torchrun: every rank trains each point
    backend = backend_of(params)
    val = backend.validation_set(params, load_teacher(paths.TEACHER))
    points = [(method, lr) for method in methods for lr in grid]
    with tempfile.TemporaryDirectory() as own:
        tmp = distributed.broadcast_path(own)  # one folder for all ranks (sharded checkpoints)

        def point(item: tuple[str, float]) -> tuple[float, dict]:
            """One grid point's validation loss and stability (inf: it diverged)."""
            method, lr = item
            run = Path(tmp) / f"{method}-lr{lr:g}"
            try:
                _, result = train_student(tuned, method, params.tune.seed, run / "ckpt",
                                          run / "log.tsv", lr=lr, probe=val, source=backend)
            except FraqatError as exc:  # the trainer stops on a non-finite loss
                log.warning("tune %s lr %g: %s", method, lr, exc)
                return math.inf, {"diverged": True}
            log.info("tune %s lr %g: validation loss %.5f (%.1f s)", method, lr,
                     result["final_target_loss"], result["wall_seconds"])
            return float(result["final_target_loss"]), \
                {k: result[k] for k in ("max_spike", "diverged", "final_loss")}

        done = dict(zip(points, jobs.run_all(point, points,
                                             jobs.workers_for(params, len(points))),
                        strict=True))
        for method in methods:
            losses = {lr: done[method, lr][0] for lr in grid}
            out["losses"][method] = {f"{lr:g}": v if math.isfinite(v) else None
                                     for lr, v in losses.items()}
            out["stability"][method] = {f"{lr:g}": done[method, lr][1] for lr in grid}
            out["chosen"][method] = choose_lr(losses)
            log.info("tune %s: lr %g", method, out["chosen"][method])
        distributed.barrier()
    if distributed.is_main():
        write_json(paths.TUNE, out)
