"""Where every stage reads and writes: the file contract between stages (relative to the repo root).

Stages talk only through these files; ``dvc.yaml`` declares the same paths.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")
REPORTS = Path("reports")

DATASET = DATA / "dataset"                        # train/heldout .safetensors + meta.json
TEACHER = DATA / "teacher"                        # the FP teacher (diffusers save_pretrained)
CALIBRATION = DATA / "calibration.safetensors"    # x_t, timesteps, labels (+ x0, noise)
TEACHER_OUTPUTS = DATA / "teacher_outputs.safetensors"
VALIDATION = DATA / "validation.safetensors"      # x_t, t, labels from train images QAT never sees
CLASSIFIER = DATA / "classifier"                  # evaluation classifier / feature network
RUNS = DATA / "runs"                              # <method>/s<seed>: one trained run
CHECKPOINTS = DATA / "checkpoints"                # resumable training state, not a DVC output
SAMPLES = DATA / "samples"
EXPORT = DATA / "export"                          # model.onnx, model.encodings, manifest.json
CONVERTED = DATA / "converted"                    # the packed W4A8 transformer (load_converted)

TRAIN_REPORTS = REPORTS / "train"
EVAL_REPORTS = REPORTS / "eval"
PLOTS = REPORTS / "plots"
EXPORT_REPORT = REPORTS / "export.json"
CONVERT_REPORT = REPORTS / "convert.json"         # bytes of the run vs the converted model
TUNE = REPORTS / "tune.json"                      # the lr grid, validation losses, chosen lr
TEACHER_REPORT = REPORTS / "teacher.json"         # weight abs-max/std, kurtosis (outliers)
COMPARISON_MD = REPORTS / "comparison.md"
COMPARISON_CSV = REPORTS / "comparison.csv"
METRICS = REPORTS / "metrics.json"


def run_name(method: str, seed: int) -> str:
    """The run's label in logs, tables and experiment names (``qat-s0``)."""
    return f"{method}-s{seed}"


def seed_name(seed: int) -> str:
    return f"s{seed}"


# One folder per method of each kind, one entry per seed in it: the grouped ``train@<method>``
# and ``evaluate@<method>`` stages each declare one output folder per kind.
def run_dir(method: str, seed: int) -> Path:
    return RUNS / method / seed_name(seed)


def checkpoint_dir(method: str, seed: int) -> Path:
    return CHECKPOINTS / method / seed_name(seed)


def train_metrics(method: str, seed: int) -> Path:
    return TRAIN_REPORTS / method / f"{seed_name(seed)}.json"


def train_log(method: str, seed: int) -> Path:
    return TRAIN_REPORTS / method / f"{seed_name(seed)}.tsv"


def eval_metrics(method: str, seed: int) -> Path:
    return EVAL_REPORTS / method / f"{seed_name(seed)}.json"


def samples_path(method: str, seed: int) -> Path:
    return SAMPLES / method / f"{seed_name(seed)}.safetensors"
