"""Preflight of a real model's run: every input checked, then GPU memory, disk and hours per
stage against a machine, before any work (``fraqat plan``, ``python -m pipelines.flows
--dry-run``).

The machine is the one it runs on (GPUs and their memory from ``torch.cuda``, free disk from
``shutil.disk_usage``) or a named one (``--gpus 8x80``: eight 80 GiB GPUs), so "does it fit
on 8 A100-80GB" has an answer on a laptop. The needs come from :mod:`fraqat.needs`' measured
rules. A run that cannot fit as configured is refused in one line (:class:`PlanError`, exit
code 2) that says what to change: gradient checkpointing, FSDP under torchrun over N GPUs, a
smaller batch, or a larger GPU.
"""

from __future__ import annotations

import json
import math
import shutil
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from fraqat import needs
from fraqat.checked import check_component, reading, require
from fraqat.errors import FraqatError
from fraqat.methods import get as method
from fraqat.params import Params

HEADROOM = 0.92  # share of a GPU's memory a plan may fill (CUDA context, fragmentation)
PROFILES = Path(__file__).resolve().parents[1] / "profiles"


class PlanError(FraqatError):
    """A run that cannot start or cannot fit, said in one line with what to change."""

    exit_code = 2


@dataclass(frozen=True)
class Machine:
    gpus: int
    gib_per_gpu: float
    disk_free_gb: float
    name: str


def parse_gpus(text: str) -> tuple[int, float]:
    """``8x80`` -> (8, 80.0): N GPUs of G GiB each."""
    n, sep, gib = text.lower().partition("x")
    try:
        count, size = int(n), float(gib)
    except ValueError:
        count, size = 0, 0.0
    if not sep or count < 1 or size <= 0:
        raise PlanError(f"--gpus {text!r}: expected NxGIB, e.g. 8x80 for eight 80 GiB GPUs")
    return count, size


def machine(where: Path, gpus: str | None = None, disk_gb: float | None = None) -> Machine:
    """This machine, or the named ``gpus`` (and ``disk_gb`` free) instead."""
    free = disk_gb if disk_gb is not None else shutil.disk_usage(where).free / needs.GB
    if gpus is not None:
        n, gib = parse_gpus(gpus)
        return Machine(n, gib, free, f"{n} x {gib:g} GiB GPU (named)")
    import torch

    if not torch.cuda.is_available():
        return Machine(0, 0.0, free, "no CUDA GPU")
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    gib = min(p.total_memory for p in props) / needs.GIB
    return Machine(len(props), gib, free, f"{len(props)} x {props[0].name} ({gib:.0f} GiB)")


# --- inputs -------------------------------------------------------------------------------


def provenance(profile: str | None, root: Path = PROFILES) -> dict:
    """``{"values": {key: "paper: …" | "assumed: …"}, "required": {key: what}}`` of a
    profile listed in ``profiles/provenance.json``; empty for any other."""
    path = root / "provenance.json"
    name = profile and (Path(profile).stem if profile.endswith((".yaml", ".yml")) else
                        Path(profile).name)
    data = json.loads(path.read_text()) if path.is_file() else {}
    if name not in data.get("profiles", {}):
        return {"values": {}, "required": {}}
    return {"values": {**data["common"], **data["profiles"][name]},
            "required": data["required"]}


def _get(params: Params, key: str) -> object:
    node: object = params
    for part in key.split("."):
        node = getattr(node, part)
    return node


def check_inputs(params: Params, required: dict[str, str]) -> list[str]:
    """Every path the run reads, checked through :mod:`fraqat.checked` (one line on the first
    bad one); returns what was found, one line per input."""
    from fraqat.models.folder import check_inputs as check_model_inputs
    from fraqat.models.folder import read_prompts, reference_images

    missing = [f"{key} ({what})" for key, what in required.items() if _get(params, key) is None]
    if missing:
        raise PlanError(f"not set: {'; '.join(missing)}; give each with --set KEY=PATH")
    check_model_inputs(params)
    e = params.eval
    found = [f"weights: {params.model_path}",
             f"prompts: {len(read_prompts(params.prompts_path))}"
             + ("" if params.prompts_path else " (the packaged list)")]
    if e.reference_path:
        found.append(f"reference images: {len(reference_images(e.reference_path))}")
    if e.feature_space == "inception" or e.inception_path:
        todo = "point eval.inception_path at clean-fid's inception-2015-12-05.pt"
        if e.inception_path is None:
            raise PlanError("eval.inception_path is not set (needed by eval.feature_space="
                            "inception: clean-fid's Inception weights file)")
        path = require(e.inception_path, "clean-fid's TorchScript Inception file", todo)
        with reading(path, "TorchScript file", todo):
            if not zipfile.is_zipfile(path):
                raise ValueError("not a TorchScript archive (no zip directory)")
        found.append("Inception: ok")
    if e.clip_path:
        check_component(e.clip_path, "point eval.clip_path at a local transformers CLIP "
                        "folder (config, weights, processor)", listed_in="eval.clip_path")
        found.append("CLIP: ok")
    return found


# --- needs --------------------------------------------------------------------------------


def run_of(params: Params, prompts: int) -> needs.Run:
    """The sizes of ``params``' run that :mod:`fraqat.needs` reads."""
    trained = [m for m in params.methods if method(m).trains]
    seeds = len(params.seeds)
    return needs.Run(resolution=params.resolution, steps=params.train.steps,
                     batch=params.train.batch_size, trained_runs=len(trained) * seeds,
                     eval_runs=len(params.methods) * seeds + 1,
                     points=params.calibration.num_samples
                     + params.calibration.validation_samples,
                     prompts=prompts, eval_images=params.eval.num_images,
                     eval_steps=params.eval.steps,
                     tune_runs=len(params.tune.lr_grid) * len(trained),
                     tune_steps=params.tune.steps or params.train.steps)


@dataclass(frozen=True)
class Layout:
    """How training runs: GPUs, sharded or replicated, checkpointing, batch per GPU."""

    gpus: int
    sharded: bool
    ckpt: bool
    batch: int  # global

    def per_gpu(self) -> int:
        return math.ceil(self.batch / self.gpus)

    def words(self) -> str:
        how = ("FSDP over" if self.sharded else "DDP over") if self.gpus > 1 else "on"
        return (f"{how} {self.gpus} GPU{'s' if self.gpus > 1 else ''}, batch "
                f"{self.per_gpu()}/GPU, checkpointing {'on' if self.ckpt else 'off'}")

    def settings(self, params: Params) -> list[str]:
        """The ``--set`` items that turn ``params`` into this layout."""
        out = []
        if self.ckpt != params.train.gradient_checkpointing:
            out.append(f"train.gradient_checkpointing={str(self.ckpt).lower()}")
        if self.gpus > 1 and self.sharded != (params.train.parallel == "fsdp"):
            out.append(f"train.parallel={'fsdp' if self.sharded else 'ddp'}")
        if self.batch != params.train.batch_size:
            out.append(f"train.batch_size={self.batch}")
        return out


def train_gib(model: str, layout: Layout, resolution: int, acts: dict, ref: dict) -> float:
    return needs.train_bytes(model, layout.per_gpu(), resolution, layout.gpus, layout.sharded,
                             layout.ckpt, acts, ref) / needs.GIB


def configured(params: Params, m: Machine) -> Layout:
    """The layout ``params`` asks for on ``m`` (all its GPUs under torchrun when > 1)."""
    gpus = max(1, m.gpus)
    return Layout(gpus, gpus > 1 and params.train.parallel == "fsdp",
                  params.train.gradient_checkpointing, params.train.batch_size)


def alternatives(params: Params, m: Machine) -> list[Layout]:
    """Layouts to try when the configured one does not fit, cheapest change first."""
    base = configured(params, m)
    gpus = max(1, m.gpus)
    out = [replace(base, ckpt=True)]
    if gpus > 1:
        out += [replace(base, sharded=True), replace(base, sharded=True, ckpt=True)]
    out += [replace(base, sharded=gpus > 1, ckpt=True, batch=b)
            for b in (4, 2, 1) if b < base.batch]
    return out


def fitting_gpus(model: str, params: Params, gib: float, acts: dict, ref: dict) -> int | None:
    """The fewest GPUs of ``gib`` that train ``params``' batch under FSDP + checkpointing."""
    for n in (2, 4, 8, 16, 32, 64):
        lay = Layout(n, True, True, max(params.train.batch_size, n))
        if train_gib(model, lay, params.resolution, acts, ref) <= gib * HEADROOM:
            return n
    return None


@dataclass(frozen=True)
class Plan:
    model: str
    machine: Machine
    layout: Layout
    train_gib: float
    infer_gib: float
    disk_gb: dict[str, float]
    hours: dict[str, float]
    evaluate_upper_hours: float
    fits: bool
    refusal: str | None
    activation_source: str

    @property
    def disk_total_gb(self) -> float:
        return sum(self.disk_gb.values())


def plan(params: Params, m: Machine, prompts: int, acts: dict | None = None,
         ref: dict | None = None) -> Plan:
    """The needs of ``params``' run on ``m``: the configured layout if it fits, else the
    refusal naming the cheapest change that would."""
    if params.model not in needs.SPECS:
        raise PlanError(f"model {params.model!r} has no plan (allowed: "
                        f"{', '.join(needs.SPECS)}; the embedded default runs on the CPU)")
    if acts is None:
        acts = needs.load_activations()[0]
    if ref is None:
        ref = needs.load_reference()[0]
    model, gib = params.model, m.gib_per_gpu
    run = run_of(params, prompts)
    lay = configured(params, m)
    need = train_gib(model, lay, params.resolution, acts, ref)
    infer = needs.infer_bytes(model, params.resolution, ref) / needs.GIB
    disk = {k: v / needs.GB for k, v in needs.disk_bytes(model, run).items()}
    refusal = None
    label = needs.SPECS[model].label
    if m.gpus == 0:
        refusal = "no CUDA GPU here (plan for one with --gpus NxGIB, e.g. --gpus 1x80)"
    elif need > gib * HEADROOM:
        better = next((a for a in alternatives(params, m)
                       if train_gib(model, a, params.resolution, acts, ref) <= gib * HEADROOM),
                      None)
        if better is not None:
            fix = f"--set {' '.join(better.settings(params))}"
            if better.gpus > 1:
                fix += f" and run train under torchrun --nproc-per-node {better.gpus}"
            fix += (f" ({better.words()}: "
                    f"{train_gib(model, better, params.resolution, acts, ref):.0f} GiB/GPU)")
        else:
            n = fitting_gpus(model, params, gib, acts, ref)
            fix = (f"use >= {n} such GPUs with --set train.parallel=fsdp "
                   "train.gradient_checkpointing=true under torchrun" if n else
                   "use GPUs with more memory")
        refusal = (f"{label} training needs {need:.0f} GiB per GPU ({lay.words()}), more "
                   f"than {HEADROOM:.0%} of {gib:g} GiB; change: {fix}")
    elif infer > gib * HEADROOM:
        refusal = (f"{label} calibrate / evaluate need {infer:.0f} GiB on one GPU (the fp32 "
                   f"pipeline + a quantized transformer), more than {HEADROOM:.0%} of "
                   f"{gib:g} GiB; change: use a GPU with >= {infer / HEADROOM:.0f} GiB")
    elif sum(disk.values()) > m.disk_free_gb:
        refusal = (f"{label} needs {sum(disk.values()):.0f} GB of disk, {m.disk_free_gb:.0f} "
                   "GB free; change: free space, or run from a larger disk")
    ckpt_time = (acts.get(model, {}).get("ckpt_time") or needs.CKPT_TIME) if lay.ckpt else 1.0
    secs = needs.seconds(model, run, ref, lay.gpus, ckpt_time)
    return Plan(model, m, lay, need, infer, disk, {k: v / 3600 for k, v in secs.items()},
                needs.evaluate_upper_seconds(model, run, ref) / 3600, refusal is None, refusal,
                needs.train_activation(model, lay.ckpt, params.resolution, acts, ref)[2])


def render(p: Plan, title: str, found: list[str], origin: dict[str, str]) -> str:
    """The plan as the user reads it before any work."""
    lines = [f"fraqat plan: {title} on {p.machine.name}, {p.machine.disk_free_gb:,.0f} GB "
             "free disk"]
    lines += [f"  inputs   {x}" for x in found] or ["  inputs   not checked"]
    gib = p.machine.gib_per_gpu
    rows = [("calibrate", p.infer_gib, p.hours["calibrate"]),
            ("teacher", p.infer_gib, p.hours["teacher"]),
            ("tune", p.train_gib, p.hours["tune"]),
            ("train", p.train_gib, p.hours["train"]),
            ("evaluate", p.infer_gib, p.hours["evaluate"])]
    lines.append(f"  {'stage':<10}{'GPU GiB':>9}{'of':>6}{'hours':>9}")
    lines += [f"  {s:<10}{g:>9.1f}{gib:>6.0f}{h:>9.1f}" for s, g, h in rows]
    lines[-1] += f"   (at most {p.evaluate_upper_hours:,.1f}: the measured rate with loading)"
    lines.append(f"  training {p.layout.words()}; activations {p.activation_source}")
    lines.append(f"  disk     {p.disk_total_gb:,.0f} GB (" + ", ".join(
        f"{k} {v:,.0f}" for k, v in p.disk_gb.items()) + ")")
    lines.append(f"  total    {sum(p.hours.values()):,.1f} h")
    if origin:
        paper = sum(v.startswith("paper") for v in origin.values())
        lines.append(f"  values   {paper} as the paper states, {len(origin) - paper} assumed "
                     "(profiles/provenance.json)")
    lines.append("  verdict  " + ("fits" if p.fits else f"refused: {p.refusal}"))
    return "\n".join(lines)
