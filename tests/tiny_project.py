"""A tiny embedded-default project in a temp folder: stages run for real at toy sizes."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY_PARAMS = {
    "methods": ["ptq", "qat", "fraqat"],
    "seeds": [0],
    "pretrain": {"width": 16, "layers": 1, "heads": 2, "steps": 5, "batch_size": 16},
    "calibration": {"num_samples": 64},
    "train": {"steps": 24, "batch_size": 8, "checkpoint_every": 4, "probe_every": 8,
              "probe_samples": 16},
    "eval": {"num_images": 20, "steps": 2, "batch_size": 20, "classifier_steps": 20},
}


def make_tiny_project(root: Path, overrides: dict | None = None) -> Path:
    """Write params.yaml and run prepare/pretrain/calibrate/teacher inside ``root``."""
    import os

    from fraqat.params import load_params
    from fraqat.stages import calibrate, prepare, pretrain, teacher

    params = {**TINY_PARAMS, **(overrides or {})}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        p = load_params("params.yaml")
        for stage in (prepare, pretrain, calibrate, teacher):
            stage.run(p)
    finally:
        os.chdir(cwd)
    return root
