"""Stage ``train --method M [--seed S]``: QAT of one run, or PTQ (calibration only); without
``--seed``, every seed of ``params.seeds``, in parallel workers (:mod:`fraqat.jobs`).

The method's recipe is :mod:`fraqat.methods`'s; its peak learning rate is the one ``tune``
chose (``reports/tune.json``, read here and passed down).
"""

from __future__ import annotations

import logging

from fraqat import jobs, paths
from fraqat.artifacts import load_tuned_lrs
from fraqat.backends import backend_of
from fraqat.io import write_json
from fraqat.params import Params
from fraqat.quant.layers import QuantConfig
from fraqat.train import distributed
from fraqat.train.runs import save_run
from fraqat.train.student import peak_lr, train_student

log = logging.getLogger(__name__)
DISTRIBUTED = True  # train.processes > 1 runs this stage under torchrun (fraqat.train.launch)


def run(params: Params, method: str, seed: int | None = None) -> None:
    seeds = list(params.seeds) if seed is None else [seed]
    distributed.init_from_env(params.device)  # under torchrun: data-parallel over the ranks
    lr = peak_lr(params, method, load_tuned_lrs())
    jobs.run_all(lambda s: train_one(params, method, s, lr), seeds,
                 jobs.workers_for(params, len(seeds)))


def train_one(params: Params, method: str, seed: int, lr: float) -> None:
    student, result = train_student(params, method, seed, paths.checkpoint_dir(method, seed),
                                    paths.train_log(method, seed), lr=lr,
                                    source=backend_of(params))
    if not distributed.is_main():
        return
    result["world_size"] = distributed.world_size()
    meta = {"method": method, "seed": seed, "weight_bits": params.bits,
            "act_bits": params.act_bits, **result}
    save_run(paths.run_dir(method, seed), student, QuantConfig.from_params(params), meta)
    write_json(paths.train_metrics(method, seed), meta)
    ckpt = paths.checkpoint_dir(method, seed) / "checkpoint.pt"
    ckpt.unlink(missing_ok=True)  # the finished run now lives in data/runs
    log.info("%s seed %d: final loss %.5f, held-out loss at %g bits %.5f, %.1f s", method, seed,
             result["final_loss"], params.bits, result["final_target_loss"],
             result["wall_seconds"])
