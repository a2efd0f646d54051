"""The trainer: exact resume after SIGKILL, corrupt checkpoints, NaN stops, method budgets."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fraqat import paths
from fraqat.errors import FraqatError
from fraqat.io import read_json
from fraqat.train.checkpoint import save_checkpoint
from tests.tiny import make_tiny_project

FRAQAT = [sys.executable, "-m", "fraqat.cli"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_tiny_project(tmp_path_factory.mktemp("proj"))


def train(root: Path, method: str = "fraqat", seed: int = 0, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(FRAQAT + ["train", "--method", method, "--seed", str(seed)], cwd=root,
                          capture_output=True, text=True, env=env, **kw)


def state_hash(root: Path, method: str = "fraqat", seed: int = 0) -> str:
    state = load_file(str(root / paths.run_dir(method, seed) / "model.safetensors"))
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].numpy().tobytes())
    return h.hexdigest()


def set_train(root: Path, **train) -> None:
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["train"].update(train)
    (root / "params.yaml").write_text(yaml.safe_dump(p))


def test_methods_share_the_budget(project):
    for method in ("ptq", "qat", "fraqat"):
        r = train(project, method)
        assert r.returncode == 0, r.stderr
    metrics = {m: read_json(project / paths.train_metrics(m, 0)) for m in ("ptq", "qat", "fraqat")}
    assert metrics["ptq"]["steps"] == 0
    assert metrics["qat"]["steps"] == metrics["fraqat"]["steps"] == 24
    log = (project / paths.train_log("fraqat", 0)).read_text().splitlines()
    assert log[0].split("\t") == ["step", "loss", "bits", "lr", "target_loss"]
    bits = [float(line.split("\t")[2]) for line in log[1:]]
    assert bits[0] == 8.0 and bits[-1] == 4.0 and bits == sorted(bits, reverse=True)
    qat_bits = {line.split("\t")[2] for line in
                (project / paths.train_log("qat", 0)).read_text().splitlines()[1:]}
    assert qat_bits == {"4.0"}
    for method in ("fraqat-late", "qat-target-steps"):  # the control: QAT on the target-bit
        r = train(project, method)  # steps of its fractional source, schedule.control_of
        assert r.returncode == 0, r.stderr
    late = (project / paths.train_log("fraqat-late", 0)).read_text().splitlines()[1:]
    at_target = [float(line.split("\t")[2]) for line in late].count(4.0)
    assert read_json(project / paths.train_metrics("qat-target-steps", 0))["steps"] == \
        at_target < 24
    assert not (project / paths.checkpoint_dir("fraqat", 0) / "checkpoint.pt").exists()


def test_resume_after_sigkill_gives_identical_weights(project):
    set_train(project, steps=160, checkpoint_every=20)
    r = train(project, "qat", seed=3)
    assert r.returncode == 0, r.stderr
    reference = state_hash(project, "qat", 3)

    ckpt = project / paths.checkpoint_dir("qat", 3) / "checkpoint.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(FRAQAT + ["train", "--method", "qat", "--seed", "3"], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed"
    step = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < step < 160

    r = train(project, "qat", seed=3)
    assert r.returncode == 0, r.stderr
    assert read_json(project / paths.train_metrics("qat", 3))["resumed_from"] >= step
    assert state_hash(project, "qat", 3) == reference
    set_train(project, steps=24, checkpoint_every=4)


def test_corrupt_checkpoint_is_reported_in_one_line(project):
    folder = project / paths.checkpoint_dir("fraqat", 7)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    r = train(project, "fraqat", seed=7)
    assert r.returncode == 2
    err = [line for line in r.stderr.splitlines() if "checkpoint.pt" in line]
    assert len(err) == 1 and "delete it" in err[0] and "Traceback" not in r.stderr
    assert (folder / "checkpoint.pt").read_bytes() == b"not a checkpoint"  # never deleted
    assert not (project / paths.run_dir("fraqat", 7)).exists()


def test_nan_loss_stops_and_keeps_last_checkpoint(project, monkeypatch):
    monkeypatch.chdir(project)
    from fraqat.models.registry import load_teacher
    from fraqat.quant.layers import QuantConfig
    from fraqat.schedule import make_schedule
    from fraqat.train.runs import quantized_copy
    from fraqat.train.student import distill_data
    from fraqat.train.trainer import TrainConfig, Trainer, calibrate

    data = distill_data()
    student = quantized_copy(load_teacher(paths.TEACHER), QuantConfig())
    calibrate(student, data)
    folder = project / "nan-ckpt"
    save_checkpoint(folder, {"step": 0, "fingerprint": "x", "rows": [], "model": {},
                             "optimizer": {}})
    before = (folder / "checkpoint.pt").read_bytes()
    data.teacher_v[:] = float("nan")
    cfg = TrainConfig(steps=10, lr=1e-4, batch_size=4, checkpoint_every=2, seed=0,
                      fingerprint="other")
    trainer = Trainer(student, data, make_schedule("constant", 4, 10), cfg, folder,
                      project / "nan.tsv")
    with pytest.raises(FraqatError, match="non-finite loss .* step 0"):
        trainer.fit()
    assert (folder / "checkpoint.pt").read_bytes() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_matches_cpu(project):
    """``device: cuda`` trains the same run as the CPU (same batches, bits and init)."""
    p = yaml.safe_load((project / "params.yaml").read_text())
    losses = {}
    for device in ("cpu", "cuda"):
        (project / "params.yaml").write_text(yaml.safe_dump({**p, "device": device}))
        r = train(project, "qat", seed=5)
        assert r.returncode == 0, r.stderr
        losses[device] = read_json(project / paths.train_metrics("qat", 5))["final_target_loss"]
    (project / "params.yaml").write_text(yaml.safe_dump(p))
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=0.05)
