"""What a real model's run needs: GPU memory per stage, disk and hours, from measured rules.

Two GPU measurements with random weights anchor the rules (``benchmarks/results/``):

- the Sana-600M pipeline through every stage (``pipeline-stages-sana-600m-*.json``,
  :func:`reference`): seconds per unit of work of each stage and the memory of calibrating /
  evaluating beside the fp32 pipeline;
- each family's transformer trained at full size (``paper-profiles-*.json``,
  :func:`activations`): peak memory at batch 1 and 2, gradient checkpointing off and on.

Rules, first order:

- training memory per GPU = 16 B/param (fp32 weights, gradients, AdamW's two moments; divided
  by the GPUs under FSDP) + the family's measured fixed part + its activation bytes per sample
  × batch per GPU × (tokens / tokens at 1024 px). A family without a measurement takes a
  measured one's (:attr:`Spec.proxy`) scaled by tokens × depth × width; without the family
  file, Sana-600M's pipeline-stage activations scaled the same way;
- calibrate / evaluate memory = 4 B/param of the whole fp32 pipeline and of the quantized
  transformer beside it + the measured Sana-600M activation part × (resolution / 1024)²
  (one block at a time and the VAE's decode: images of the same size cost the same);
- time of every stage ∝ transformer params × tokens (the FLOPs of its linear layers), from the
  measured seconds per unit of work; checkpointing multiplies training time by the family's
  measured ratio; N GPUs divide it by N (ideal scaling: a lower bound); a sampling step is one
  forward per guidance branch, a third of the measured training step per sample (the
  measured evaluation, pipeline loading included, gives :func:`evaluate_upper_seconds`);
- disk = the bf16 checkpoint + fp32 calibration latents and prompt embeddings + the bf16
  teacher cache + fp32 students + float16 samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GB = 1e9
GIB = 2**30
STATIC = 16   # bytes per trained parameter: fp32 weights + grads + AdamW's two moments
CKPT_TIME = 1.33  # checkpointing's time factor without a measurement: one more forward
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@dataclass(frozen=True)
class Spec:
    """A paper model at full size (parameter counts of its diffusers configs, checked against
    meta-device builds by ``tests/benchmarks``)."""

    label: str
    transformer: int
    pipeline: int           # transformer + VAE + text encoders
    depth: int              # transformer blocks
    width: int              # model width
    latent_channels: int
    vae_factor: int         # pixels per latent cell
    patch: int
    joint: int              # text tokens inside the image attention (MMDiT)
    text: tuple[int, int]   # prompt embedding (tokens, width)
    eval_steps: int         # the pipeline's usual sampling steps
    forwards: int = 2       # transformer calls per sampling step (2: classifier-free guidance)
    proxy: str | None = None  # measured family whose activations scale to this one


SPECS: dict[str, Spec] = {
    "sana-600m": Spec("Sana-600M", 591_747_872, 3_518_340_035, 28, 1152, 32, 32, 1, 0,
                      (300, 2304), 20),
    "sana-1.6b": Spec("Sana-1.6B", 1_604_462_752, 4_531_054_915, 20, 2240, 32, 32, 1, 0,
                      (300, 2304), 20, proxy="sana-600m"),
    "pixart-sigma": Spec("PixArt-Σ", 610_856_096, 5_456_820_615, 28, 1152, 4, 8, 2, 0,
                         (300, 4096), 20, proxy="sana-600m"),
    "sd3.5-medium": Spec("SD3.5-Medium", 2_243_171_520, 7_907_613_331, 24, 1536, 16, 8, 2, 333,
                         (333, 4096), 28, proxy="pixart-sigma"),
    "flux-schnell": Spec("FLUX.1-schnell", 11_891_178_560, 16_860_370_707, 57, 3072, 16, 8, 2,
                         256, (256, 4096), 4, forwards=1, proxy="sd3.5-medium"),
}


def tokens(spec: Spec, resolution: int = 1024) -> int:
    """Tokens one sample puts through the attention: image patches (+ joint text)."""
    side = resolution // spec.vae_factor
    return side * side // spec.patch**2 + spec.joint


def latent_numel(spec: Spec, resolution: int) -> int:
    return spec.latent_channels * (resolution // spec.vae_factor) ** 2


def _newest(pattern: str, root: Path) -> Path | None:
    found = sorted(root.glob(pattern))
    return found[-1] if found else None


def reference(result: dict) -> dict:
    """A Sana-600M pipeline-stage run's per-unit numbers: bytes of activations, seconds per
    unit of work."""
    run = result["run"]
    n_tr, n_pipe = run["params"]["transformer"], sum(run["params"].values())
    trained = [m for m, s in run["train_steps"].items() if s > 0]
    step_s = sum(run["train_wall_seconds"][m] / run["train_steps"][m] for m in trained) / max(
        1, len(trained))
    stage = lambda prefix: [s for s in result["stages"]  # noqa: E731
                            if s["stage"].split()[0] == prefix]
    peak = lambda rows: max((r["peak_allocated_gib"] or 0.0) for r in rows) * GIB  # noqa: E731
    points = run["num_samples"] + run["probe"]
    evals = stage("evaluate")
    return {"transformer": n_tr, "tokens": 1024, "depth_width": run["depth_width"],
            "batch": run["batch"], "resolution": run["resolution"],
            "train_act_bytes": max(0.0, peak(stage("train")) - STATIC * n_tr),
            "infer_act_bytes": max(0.0, peak([r for r in evals if r["stage"] == "evaluate fp"]
                                             + stage("calibrate")) - 4 * n_pipe),
            "train_step_s": step_s,
            "teacher_point_s": stage("teacher")[0]["wall_s"] / points,
            "calibrate_point_s": stage("calibrate")[0]["wall_s"]
            / (points + run["validation"]),
            "eval_image_step_s": sum(r["wall_s"] for r in evals)
            / (len(evals) * run["images"] * run["eval_steps"])}


def load_reference(root: Path = RESULTS) -> tuple[dict, Path]:
    """The newest finished GPU stage run under ``root``."""
    for path in sorted(root.glob("pipeline-stages-sana-600m-*.json"), reverse=True):
        r = json.loads(path.read_text())
        if "needs" in r and not r["meta"].get("tiny"):
            return reference(r), path
    raise FileNotFoundError(f"no pipeline-stages-sana-600m-*.json GPU run in {root}")


def activations(result: dict) -> dict[str, dict]:
    """Per measured family: peak bytes at batch 1 and bytes per further sample, checkpointing
    off (False) and on (True) where both batches ran, and checkpointing's measured time
    factor at batch 2."""
    out: dict[str, dict] = {}
    for m in result.get("models", []):
        rows = {(r["batch"], r["checkpointing"]): r for r in m.get("rows", [])
                if r.get("peak_gib") is not None}
        fam: dict = {"static": m["static_bytes_per_param"] * m["params"]}
        for ckpt in (False, True):
            if (1, ckpt) in rows and (2, ckpt) in rows:
                p1, p2 = rows[(1, ckpt)]["peak_gib"] * GIB, rows[(2, ckpt)]["peak_gib"] * GIB
                fam[ckpt] = {"fixed": p1 - (p2 - p1) - fam["static"], "per_sample": p2 - p1}
        if (2, False) in rows and (2, True) in rows:
            fam["ckpt_time"] = rows[(2, True)]["median_ms"] / rows[(2, False)]["median_ms"]
        if False in fam or True in fam:
            out[m["model"]] = fam
    return out


def load_activations(root: Path = RESULTS) -> tuple[dict[str, dict], Path | None]:
    path = _newest("paper-profiles-*.json", root)
    return (activations(json.loads(path.read_text())), path) if path else ({}, None)


def _act_scale(spec: Spec, other: Spec, resolution: int) -> float:
    """tokens × depth × width of ``spec`` at ``resolution`` over ``other``'s at 1024 px."""
    return (tokens(spec, resolution) * spec.depth * spec.width
            / (tokens(other, 1024) * other.depth * other.width))


def train_activation(model: str, ckpt: bool, resolution: int, acts: dict[str, dict],
                     ref: dict) -> tuple[float, float, str]:
    """(fixed bytes, bytes per sample, source) of training ``model`` at ``resolution``."""
    spec, name = SPECS[model], model
    while ckpt not in acts.get(name, {}) and SPECS[name].proxy:
        name = SPECS[name].proxy  # type: ignore[assignment]
    if ckpt in acts.get(name, {}):
        a = acts[name][ckpt]
        if name == model:
            return a["fixed"], a["per_sample"] * tokens(spec, resolution) / tokens(spec), \
                "measured"
        return 0.0, a["per_sample"] * _act_scale(spec, SPECS[name], resolution), \
            f"scaled from {SPECS[name].label}"
    sana = SPECS["sana-600m"]
    per = ref["train_act_bytes"] / ref["batch"] * _act_scale(spec, sana, resolution)
    return 0.0, per * (0.1 if ckpt else 1.0), "scaled from Sana-600M's pipeline run"


def train_bytes(model: str, batch: int, resolution: int, gpus: int, sharded: bool,
                ckpt: bool, acts: dict[str, dict], ref: dict) -> float:
    """Peak GPU bytes per GPU of one training step (``batch`` per GPU)."""
    fixed, per, _ = train_activation(model, ckpt, resolution, acts, ref)
    return STATIC * SPECS[model].transformer / (gpus if sharded else 1) + fixed + per * batch


def infer_bytes(model: str, resolution: int, ref: dict) -> float:
    """Peak GPU bytes of calibrate / evaluate: the fp32 pipeline + a quantized transformer."""
    s = SPECS[model]
    return 4 * (s.pipeline + s.transformer) + ref["infer_act_bytes"] * (resolution / 1024) ** 2


@dataclass(frozen=True)
class Run:
    """The sizes of one run that the needs depend on (from params: :func:`fraqat.plan.run_of`)."""

    resolution: int
    steps: int
    batch: int
    trained_runs: int     # trained methods × seeds
    eval_runs: int        # every method × seeds + the FP pipeline
    points: int           # calibration points (+ validation)
    prompts: int
    eval_images: int
    eval_steps: int
    tune_runs: int = 0    # learning rates × tuned methods
    tune_steps: int = 0


def disk_bytes(model: str, run: Run) -> dict[str, float]:
    s = SPECS[model]
    latent = latent_numel(s, run.resolution)
    return {"checkpoint": 2 * s.pipeline,
            "calibration": 4 * run.points * latent + 4 * run.prompts * s.text[0] * s.text[1],
            "teacher": 2 * run.points * latent,
            "runs": 4 * s.transformer * run.trained_runs
            + 2 * 3 * run.resolution**2 * run.eval_images * run.eval_runs}


def seconds(model: str, run: Run, ref: dict, gpus: int = 1, ckpt_time: float = 1.0
            ) -> dict[str, float]:
    """Wall seconds per stage; training on ``gpus`` GPUs at ``ckpt_time`` × the step."""
    s, sana = SPECS[model], SPECS["sana-600m"]
    work = s.transformer * tokens(s, run.resolution) / (sana.transformer * tokens(sana))
    step = ref["train_step_s"] * work * run.batch / ref["batch"] * ckpt_time / gpus
    forward = ref["train_step_s"] * work / ref["batch"] / 3  # one sample's forward
    return {"calibrate": ref["calibrate_point_s"] * work * run.points,
            "teacher": ref["teacher_point_s"] * work * run.points,
            "tune": step * run.tune_steps * run.tune_runs,
            "train": step * run.steps * run.trained_runs,
            "evaluate": forward * s.forwards * run.eval_images * run.eval_steps * run.eval_runs}


def evaluate_upper_seconds(model: str, run: Run, ref: dict) -> float:
    """Evaluate's wall seconds at the measured run's seconds per image-step, whose 4-image
    evaluations included loading the pipeline: an upper bound."""
    s, sana = SPECS[model], SPECS["sana-600m"]
    work = s.transformer * tokens(s, run.resolution) / (sana.transformer * tokens(sana))
    return ref["eval_image_step_s"] * work * run.eval_images * run.eval_steps * run.eval_runs
