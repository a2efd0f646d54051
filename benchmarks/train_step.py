"""Time of ``fraqat train``'s own step (``Trainer.train_step``) on a real-size DiT, interleaved.

    python -m benchmarks.train_step --json out.json [--model sana|flux]
        [--runs fp:eager,...,w4a8:compile] [--rounds 8 --steps 5] [--compile regional|whole]

The student is diffusers' SanaTransformer2DModel at the Sana-600M configuration (random init;
or FLUX.1's transformer reduced to 2 double + 4 single blocks) inside the trainer exactly as
``fraqat train`` builds it: AdamW, MSE distillation to cached teacher velocities, bf16
autocast, batch 8 (FLUX: 2). Variants: full precision ("fp"), fraqat W4A8 (fractional-bit
weights through the fused ops, INT8 activations calibrated on one batch) and, where the
package is installed, torchao's QAT. Modes: "eager" (``train.cuda_graphs: off``), "graph"
(the default on CUDA: forward + backward replayed from a CUDA graph) and "compile" (the
transformer's blocks under ``torch.compile``, or the whole transformer with ``--compile
whole``; eager runner). "1st step s" is the first step's wall time: compilation, graph capture
and kernel JIT happen there.

Drift-proof: every run is built and warmed up in this one process first, then timed in
alternating rounds (A B C, B C A, C A B, ... ``--steps`` steps each, the order rotated each
round), so a GPU that speeds up or slows down during the benchmark moves every run alike.
Ratios are also taken round by round (each run's round median over the fastest FP's in the
same round, seconds apart): their median, min-max and quartiles.
Each step is timed on the host from call to return with the GPU synchronized (the trainer
reads every loss); a run's time is the median over all its steps, its spread the min / max of
its per-round medians. The FP baseline is the fastest FP run (best of eager / graph /
compile): the step a user can actually get. Memory: the run's own peak allocation while it was
built and warmed up (weights, gradients, optimizer states, activations, graph pool), taken
alone, before the next run is built.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch import nn

from benchmarks.configs import SANA_600M
from benchmarks.timing import (
    first_line,
    interleaved,
    meta,
    positive,
    quartiles,
    spread,
    sync,
    write_json,
)
from fraqat.data import PROMPTS
from fraqat.models.registry import TextToImage
from fraqat.quant.layers import QuantConfig, quantize_model
from fraqat.schedule import ConstantSchedule
from fraqat.train.trainer import DistillData, TrainConfig, Trainer, calibrate

GIB = 2**30
SANA_TINY = dict(SANA_600M, attention_head_dim=8, num_attention_heads=4, num_layers=2,
                 cross_attention_dim=32, cross_attention_head_dim=8,
                 num_cross_attention_heads=4, caption_channels=64, sample_size=8)
FLUX_REDUCED = dict(num_layers=2, num_single_layers=4)  # of 19 + 38 in FLUX.1
FLUX_TINY = dict(num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
                 axes_dims_rope=(4, 6, 6))
VARIANTS = ("fp", "w4a8", "torchao")


def _compile_blocks(transformer: nn.Module) -> None:
    """Regional compilation (diffusers' ``compile_repeated_blocks``): one compile of the block
    code serves every block, so compile time does not grow with depth."""
    for stack in transformer.children():  # Sana: transformer_blocks; FLUX: two stacks
        if isinstance(stack, nn.ModuleList):
            for block in stack:
                block.compile()


COMPILE = {"regional": _compile_blocks, "whole": lambda t: t.compile()}
MODES = ("eager", "graph", "compile")
DEFAULT_RUNS = "fp:eager,fp:graph,fp:compile,w4a8:eager,w4a8:graph,w4a8:compile"


class FixedEncoder(nn.Module):
    """Stands in for the frozen text encoder: fixed random caption states per prompt."""

    def __init__(self, tokens: int, width: int):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("hidden", torch.randn(len(PROMPTS), tokens, width, generator=g))
        self.register_buffer("mask", torch.ones(len(PROMPTS), tokens, dtype=torch.long))

    def encode(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hidden[: len(prompts)], self.mask[: len(prompts)]


class FluxStudent(TextToImage):
    """FLUX's call convention (packed latent tokens, pooled text, position ids)."""

    def predict(self, x, t, hidden, mask):
        b, tokens = x.shape[0], x.shape[1]
        return self.transformer(hidden_states=x, encoder_hidden_states=hidden,
                                pooled_projections=hidden[:, 0, :self.pooled], timestep=t,
                                img_ids=self.img_ids[:tokens], txt_ids=self.txt_ids,
                                return_dict=False)[0].reshape(b, tokens, -1)


def build(model: str, tiny: bool, device: str) -> tuple[TextToImage, DistillData, int, str]:
    g = torch.Generator().manual_seed(1)
    n = 16 if tiny else 64
    if model == "sana":
        from diffusers import SanaTransformer2DModel
        cfg = SANA_TINY if tiny else SANA_600M
        tokens, side, ch = (8 if tiny else 300), cfg["sample_size"], cfg["in_channels"]
        student = TextToImage(SanaTransformer2DModel(**cfg),
                              FixedEncoder(tokens, cfg["caption_channels"]), (ch, side, side),
                              prompts=PROMPTS)
        shape, batch = (ch, side, side), 2 if tiny else 8
        label = (f"Sana-{'tiny' if tiny else '600M'} config, batch {batch}, "
                 f"{side}x{side}x{ch} latents, {tokens} caption tokens")
    else:
        from diffusers import FluxTransformer2DModel
        cfg = FLUX_TINY if tiny else FLUX_REDUCED
        img, txt = (16, 8) if tiny else (4096, 512)
        joint = cfg.get("joint_attention_dim", 4096)
        student = FluxStudent(FluxTransformer2DModel(**cfg), FixedEncoder(txt, joint), (img, 64),
                              prompts=PROMPTS)
        student.pooled = cfg.get("pooled_projection_dim", 768)
        student.img_ids = torch.randn(img, 3, generator=g).to(device)
        student.txt_ids = torch.zeros(txt, 3, device=device)
        shape, batch = (img, 64), 1 if tiny else 2
        label = (f"FLUX.1 reduced to {cfg['num_layers']} double + {cfg['num_single_layers']} "
                 f"single blocks, batch {batch}, {img} image + {txt} text tokens")
    data = DistillData(torch.randn(n, *shape, generator=g), torch.rand(n, generator=g),
                       torch.randint(0, len(PROMPTS), (n,), generator=g),
                       torch.randn(n, *shape, generator=g))
    return student.to(device), data.to(device), batch, label


def make_trainer(args, variant: str, mode: str, tmp: Path) -> tuple[Trainer, str]:
    torch.manual_seed(0)
    student, data, batch, label = build(args.model, args.tiny, args.device)
    if variant == "w4a8":
        quantize_model(student.transformer, QuantConfig(weight_bits=args.bits, act_bits=8.0,
                                                        granularity=args.granularity))
        calibrate(student, data, batch_size=batch, num_batches=1)
    elif variant == "torchao":
        from torchao.quantization import quantize_
        from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig
        act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
        weight = IntxFakeQuantizeConfig(torch.int4, group_size=32, is_symmetric=True)
        quantize_(student.transformer, QATConfig(activation_config=act, weight_config=weight,
                                                 step="prepare"))
    cfg = TrainConfig(steps=10**6, lr=1e-5, batch_size=batch, checkpoint_every=10**9, seed=0,
                      cuda_graphs="on" if mode == "graph" else "off", autocast="bf16")
    trainer = Trainer(student, data, ConstantSchedule(args.bits, 10**6), cfg, tmp / "ckpt",
                      tmp / "log.tsv")
    if mode == "compile":
        COMPILE[args.compile](student.transformer)
    trainer.build_runner()
    return trainer, label


class Run:
    """One (variant, mode) trainer, built and warmed up, ready for timed rounds."""

    def __init__(self, args, variant: str, mode: str, tmp: Path):
        self.variant, self.mode = variant, mode
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() if cuda else 0
        start = time.perf_counter()
        self.trainer, self.label = make_trainer(args, variant, mode, tmp)
        self.steps = itertools.count()
        sync()
        first = time.perf_counter()
        self.step()  # compile, capture, Triton JIT, cuBLAS handles
        sync()
        self.first_step_s = time.perf_counter() - first
        for _ in range(args.warmup - 1):
            self.step()
        sync()
        self.build_s = time.perf_counter() - start
        self.peak_gib = (torch.cuda.max_memory_allocated() - before) / GIB if cuda else 0.0
        self.rounds: list[list[float]] = []

    def step(self) -> None:
        self.trainer.train_step(next(self.steps))

    def row(self) -> dict:
        return {"variant": self.variant, "mode": self.mode, **spread(self.rounds),
                "peak_gib": self.peak_gib, "build_s": self.build_s,
                "first_step_s": self.first_step_s,
                "params_m": sum(p.numel() for p in self.trainer.params) / 1e6}


def add_ratios(rows: list[dict]) -> None:
    """``x_fastest_fp``: against the fastest FP run; ``x_fp``: against FP in the same mode."""
    fp = {r["mode"]: r for r in rows if r["variant"] == "fp" and "median" in r}
    if not fp:
        return
    fastest = min(fp.values(), key=lambda r: r["median"])
    for r in rows:
        if "median" not in r:
            continue
        r["x_fastest_fp"] = r["median"] / fastest["median"]
        r["fastest_fp"] = f"fp:{fastest['mode']}"
        if r["mode"] in fp:
            r["x_fp"] = r["median"] / fp[r["mode"]]["median"]
        r["x_fastest_fp_mem"] = r["peak_gib"] / fastest["peak_gib"] if fastest["peak_gib"] else 0.0
        if "repeat_medians" in r:
            add_paired(r, fastest)


def add_paired(r: dict, fastest: dict) -> None:
    """Ratios round by round (both ran within seconds of each other, so drift cancels):
    ``x_rounds_median``, ``_lo`` / ``_hi`` (min-max) and ``_iqr`` (quartiles)."""
    paired = [a / b for a, b in zip(r["repeat_medians"], fastest["repeat_medians"],
                                    strict=True)]
    r["x_fastest_fp_rounds"] = paired
    r["x_rounds_median"] = statistics.median(paired)
    r["x_rounds_lo"], r["x_rounds_hi"] = min(paired), max(paired)
    r["x_rounds_iqr"] = quartiles(paired)


def table(res: dict) -> str:
    m = res["meta"]
    lines = [f"{m['device']} | torch {m['torch']} | triton {m['triton']} | diffusers "
             f"{m['diffusers']} | {m['date']}", res.get("label", ""),
             f"{'variant':9}{'mode':9}{'ms/step':>9}{'spread':>15}{'x fastest FP':>13}"
             f"{'paired by round [min-max]':>27}{'x FP mode':>10}{'peak GiB':>9}"
             f"{'x FP mem':>9}{'build s':>8}{'1st step s':>11}"]
    nan = float("nan")
    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"{r['variant']:9}{r['mode']:9}skipped: {r['skipped']}")
            continue
        lo_hi = f"[{r['lo']:.1f}-{r['hi']:.1f}]"
        paired = (f"{r.get('x_rounds_median', nan):.3f} [{r.get('x_rounds_lo', nan):.3f}-"
                  f"{r.get('x_rounds_hi', nan):.3f}]")
        lines.append(f"{r['variant']:9}{r['mode']:9}{r['median']:9.1f}{lo_hi:>15}"
                     f"{r.get('x_fastest_fp', nan):13.3f}{paired:>27}{r.get('x_fp', nan):10.3f}"
                     f"{r['peak_gib']:9.1f}{r.get('x_fastest_fp_mem', nan):9.2f}"
                     f"{r['build_s']:8.1f}{r['first_step_s']:11.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["sana", "flux"], default="sana")
    p.add_argument("--runs", default=DEFAULT_RUNS, help="variant:mode,... timed interleaved")
    p.add_argument("--bits", type=float, default=4.0)
    p.add_argument("--granularity", choices=["tensor", "channel", "group"], default="tensor")
    p.add_argument("--rounds", type=positive, default=8)
    p.add_argument("--steps", type=positive, default=5, help="timed steps per run per round")
    p.add_argument("--warmup", type=positive, default=3)
    p.add_argument("--compile", choices=sorted(COMPILE), default="regional",
                   help="compile mode: each transformer block (default) or the whole model")
    p.add_argument("--max-seconds", type=float, default=float("inf"),
                   help="stop the timed rounds after the round that passes this many seconds")
    p.add_argument("--json", type=Path)
    p.add_argument("--tiny", action="store_true", help="tiny sizes on any device")
    args = p.parse_args(argv)
    runs = [(v, m) for v, _, m in (item.partition(":") for item in args.runs.split(","))]
    bad = [f"{v}:{m}" for v, m in runs if v not in VARIANTS or m not in MODES]
    if bad:
        p.error(f"--runs {','.join(bad)} not allowed (allowed: variant:mode with variants "
                f"{', '.join(VARIANTS)} and modes {', '.join(MODES)})")
    if not torch.cuda.is_available() and not args.tiny:
        p.error("no CUDA device (allowed without one: --tiny)")
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    res: dict = {"meta": meta(), "model": args.model, "rounds": args.rounds,
                 "steps_per_round": args.steps, "rows": []}
    built: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (variant, mode) in enumerate(runs):
            if mode == "graph" and args.device != "cuda":
                res["rows"].append({"variant": variant, "mode": mode, "skipped": "needs CUDA"})
                continue
            try:
                run = Run(args, variant, mode, Path(tmp) / str(i))
                res["label"] = run.label
                built.append(run)
                print(f"built {variant}:{mode} in {run.build_s:.1f} s, "
                      f"peak {run.peak_gib:.1f} GiB", flush=True)
            except ImportError as err:
                res["rows"].append({"variant": variant, "mode": mode,
                                    "skipped": f"missing {err.name}"})
            except Exception as err:  # one broken run must not hide the others' numbers
                traceback.print_exc()
                res["rows"].append({"variant": variant, "mode": mode,
                                    "skipped": first_line(err)})
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        skipped, start = res["rows"], time.perf_counter()

        def save(times: dict[str, list[list[float]]]) -> bool:
            """Write the rows after every round: a run cut short keeps its finished rounds."""
            for run in built:
                run.rounds = times[f"{run.variant}:{run.mode}"]
            res["rows"] = [r.row() for r in built] + skipped
            add_ratios(res["rows"])
            res["rounds_done"] = len(built[0].rounds) if built else 0
            write_json(args.json, res)
            return time.perf_counter() - start < args.max_seconds

        interleaved({f"{r.variant}:{r.mode}": r.step for r in built}, args.rounds, args.steps,
                    on_round=save)
        for run in built:
            run.trainer.runner.release()
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
