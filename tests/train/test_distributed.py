"""torchrun data parallelism on CPU (gloo): 2 processes match 1 process for one global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fraqat import paths
from fraqat.errors import ParamsError
from fraqat.io import read_json
from fraqat.train import distributed
from tests.tiny import make_tiny_project


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_tiny_project(tmp_path_factory.mktemp("ddp"),
                             {"train": {"steps": 12, "batch_size": 8, "checkpoint_every": 5,
                                        "probe_every": 6, "probe_samples": 16}})


def weights(root: Path) -> dict[str, torch.Tensor]:
    return load_file(str(root / paths.run_dir("fraqat", 0) / "model.safetensors"))


def test_two_gloo_processes_match_one(project):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "fraqat.cli", "train", "--method", "fraqat",
                          "--seed", "0"], cwd=project, capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    single, log_single = weights(project), (project / paths.train_log("fraqat", 0)).read_text()
    shutil.rmtree(project / paths.run_dir("fraqat", 0))

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "fraqat.cli", "train", "--method", "fraqat",
                "--seed", "0"]
    two = subprocess.run(torchrun, cwd=project, capture_output=True, text=True, env=env,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert read_json(project / paths.train_metrics("fraqat", 0))["world_size"] == 2
    ddp = weights(project)
    assert single.keys() == ddp.keys()
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-5, msg=k)
    rows = [line.split("\t") for line in log_single.splitlines()[1:]]
    rows_ddp = [line.split("\t") for line in
                (project / paths.train_log("fraqat", 0)).read_text().splitlines()[1:]]
    assert [r[2] for r in rows] == [r[2] for r in rows_ddp]  # same bit schedule
    for a, b in zip(rows, rows_ddp, strict=True):
        assert float(a[1]) == pytest.approx(float(b[1]), rel=1e-3)  # same global-batch loss


def test_processes_param_restarts_train_and_tune_under_torchrun(tmp_path):
    """``train.processes: 2``: the plain stage commands run as two gloo ranks (one command)."""
    project = make_tiny_project(tmp_path, {
        "train": {"steps": 6, "batch_size": 8, "checkpoint_every": 5, "probe_every": 3,
                  "probe_samples": 16, "processes": 2},
        "tune": {"lr_grid": [1e-3, 3e-3], "steps": 3}, "methods": ["qat"]})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    for args in (["tune"], ["train", "--method", "qat", "--seed", "0"]):
        done = subprocess.run([sys.executable, "-m", "fraqat.cli", *args], cwd=project,
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    tuned = read_json(project / paths.TUNE)
    assert set(tuned["losses"]["qat"]) == {"0.001", "0.003"} and tuned["chosen"]["qat"] > 0
    assert read_json(project / paths.train_metrics("qat", 0))["world_size"] == 2


def test_resolve_device():
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    # CPU runs use gloo where GPUs are visible too (two CPU ranks on a one-GPU machine)
    assert distributed.backend_for("cpu", 1, 1) == "gloo"
    assert distributed.backend_for("auto", 1, 0) == "gloo"
    assert distributed.backend_for("cuda", 1, 2) == "nccl"
    with pytest.raises(ParamsError, match="rank 1 sees 1 GPU"):
        distributed.backend_for("auto", 1, 1)
    assert distributed.resolve_device("auto").type == ("cuda" if torch.cuda.is_available()
                                                       else "cpu")
    with pytest.raises(ValueError, match="device: 'tpu' is not allowed"):
        distributed.resolve_device("tpu")
