"""The trainer's step under CUDA graphs equals the eager step (GPU); the switch on the CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import SanaTransformer2DModel

from fraqat.data import PROMPTS
from fraqat.errors import FraqatError, ParamsError
from fraqat.models.registry import TextToImage, tiny_sana_config
from fraqat.models.text_encoder import PromptEncoder
from fraqat.quant.layers import QuantConfig, quantize_model
from fraqat.schedule import ProgressiveSchedule
from fraqat.train.step import StepRunner
from fraqat.train.trainer import DistillData, TrainConfig, Trainer, calibrate

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
STEPS = 8
# fp warm-up, then 8 -> 6 -> 4 bits: one re-capture (weights become quantized), then values only
SCHEDULE = ProgressiveSchedule(levels=(None, 8.0, 6.0, 4.0), boundaries=(0, 2, 4, 6),
                               total_steps=STEPS)


def make_trainer(tmp: Path, device: str, cuda_graphs: str, autocast: str = "off",
                 schedule=SCHEDULE, checkpoint_every: int = 100) -> Trainer:
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(**tiny_sana_config(width=32, layers=2, heads=2))
    student = TextToImage(transformer, PromptEncoder.from_prompts(PROMPTS, 32), (1, 8, 8))
    quantize_model(student.transformer, QuantConfig(weight_bits=8.0, granularity="channel"))
    g = torch.Generator().manual_seed(1)
    n = 64
    data = DistillData(torch.randn(n, 1, 8, 8, generator=g), torch.rand(n, generator=g),
                       torch.randint(0, len(PROMPTS), (n,), generator=g),
                       torch.randn(n, 1, 8, 8, generator=g))
    student.to(device)
    data = data.to(device)
    calibrate(student, data, batch_size=32, num_batches=1)
    tc = TrainConfig(steps=schedule.total_steps, lr=1e-3, batch_size=16,
                     checkpoint_every=checkpoint_every, seed=0, probe_every=3,
                     cuda_graphs=cuda_graphs, autocast=autocast)
    return Trainer(student, data, schedule, tc, tmp / "ckpt", tmp / "log.tsv", probe=data)


def test_graph_switch_on_the_cpu(tmp_path: Path) -> None:
    short = ProgressiveSchedule(levels=(None, 8.0), boundaries=(0, 1), total_steps=2)
    t = make_trainer(tmp_path, "cpu", "auto", schedule=short)
    t.fit()
    assert t.runner.captures == 0 and not t.runner.graphs  # auto: eager off CUDA
    with pytest.raises(ParamsError, match="train.cuda_graphs: 'on' needs one CUDA process"):
        StepRunner(lambda i: i, [], torch.device("cpu"), "on")
    with pytest.raises(ParamsError, match="allowed: auto, on, off"):
        StepRunner(lambda i: i, [], torch.device("cpu"), "sometimes")


def _weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in t._module().state_dict().items()}


@gpu
@needs_cuda
@pytest.mark.parametrize("autocast", ["off", "bf16"])
def test_graph_step_equals_eager_across_bit_changes(tmp_path: Path, autocast: str) -> None:
    runs = {}
    for mode in ("off", "on"):
        t = make_trainer(tmp_path / mode, "cuda", mode, autocast)
        t.fit()
        runs[mode] = (t, [r["loss"] for r in t.rows], [r["target_loss"] for r in t.rows])
    eager, graph = runs["off"], runs["on"]
    # None -> 8 bits changes which kernels run: 2 captures; 8 -> 6 -> 4 only values
    assert graph[0].runner.captures == 2 and eager[0].runner.captures == 0
    assert graph[1] == eager[1] and graph[2] == eager[2]
    we, wg = _weights(eager[0]), _weights(graph[0])
    assert all(torch.equal(we[k], wg[k]) for k in we)


@gpu
@needs_cuda
def test_graph_nan_guard_and_resume(tmp_path: Path) -> None:
    t = make_trainer(tmp_path / "nan", "cuda", "on")
    t.data.teacher_v[:] = math.nan
    before = _weights(t)
    with pytest.raises(FraqatError, match="non-finite loss"):
        t.fit()
    after = _weights(t)
    assert all(torch.equal(before[k], after[k]) for k in before)  # no update from a NaN step

    full = make_trainer(tmp_path / "full", "cuda", "on")
    full.fit()
    part = make_trainer(tmp_path / "part", "cuda", "on", checkpoint_every=4)
    step_fn = part.train_step

    def killed_at_5(step: int):
        if step == 5:  # after the checkpoint of step 4
            raise KeyboardInterrupt
        return step_fn(step)

    part.train_step = killed_at_5
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    resumed = make_trainer(tmp_path / "part", "cuda", "on", checkpoint_every=4)
    result = resumed.fit()
    assert result["resumed_from"] == 4
    wf, wr = _weights(full), _weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
