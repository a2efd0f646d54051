"""Real diffusers pipelines through the whole graph: tiny random-weight pipelines of the four
families (``tests/tiny_pipelines.py``) on ``profiles/pipeline-tiny.yaml``.

Each family runs as ``dvc repro`` in a scratch copy of the repo, as a user would run it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from fraqat import paths, profiles
from fraqat.cli import app
from tests.tiny import env_for, git, make_tiny_repo
from tests.tiny_pipelines import MODEL_OF, save_tiny_clip

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "pipeline-tiny.yaml"
TABLE_ROWS = ["fp", "ptq", "qat", "fraqat", "noise"]


def profile(family: str, pipe_dir: Path, **extra) -> dict:
    raw = profiles.merged(PROFILE)
    raw.update(model=MODEL_OF[family], model_path=str(pipe_dir), **extra)
    return raw


def check_results(root: Path, family: str) -> None:
    table = pd.read_csv(root / "reports/comparison.csv")
    assert table["method"].tolist() == TABLE_ROWS
    assert table["fid_mean"].notna().all()
    fp = json.loads((root / paths.eval_metrics("fp", 0)).read_text())
    assert fp["model"] == MODEL_OF[family] and fp["feature_space"] == "classifier-8x8-grey"
    assert fp["fid_reference"] == "fp pipeline images" and fp["teacher_mse"] == 0
    for method in ("ptq", "qat", "fraqat"):
        ev = json.loads((root / paths.eval_metrics(method, 0)).read_text())
        assert ev["weight_bits"] == 4 and ev["teacher_mse"] > 0
        assert ev["heldout_distill_loss"] > 0
    v = load_file(str(root / "data/teacher_outputs.safetensors"))["v"]
    assert v.dtype == torch.bfloat16
    weights = json.loads((root / "reports/teacher.json").read_text())  # the real teacher's
    assert weights["max_kurtosis"] > 0 and weights["outlier_fraction"] == 0
    export = json.loads((root / "reports/export.json").read_text())
    assert export["passed"] is (True if family == "sana" else None)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sana", "pixart", "sd3", "flux"])
def test_dvc_repro_end_to_end(family, tiny_pipeline_dir, tmp_path):
    repo = make_tiny_repo(tmp_path / "repo", profile="profiles/pipeline-tiny.yaml")
    raw = profile(family, tiny_pipeline_dir(family))
    if family == "pixart":  # the CLIP score, from a local random-weight CLIP
        raw["eval"]["clip_path"] = str(save_tiny_clip(tmp_path / "clip"))
    if family == "sd3":  # learning rates tuned on the validation trajectories
        raw["tune"] = {"lr_grid": [1e-4, 1e-3], "steps": 4, "seed": 0}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    git(repo, "commit", "-qam", f"{family} pipeline")
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env_for(repo),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_results(repo, family)
    scores = [json.loads((repo / paths.eval_metrics(m, 0)).read_text())["clip_score"]
              for m in ("fp", "ptq", "qat", "fraqat")]
    table = pd.read_csv(repo / "reports/comparison.csv").set_index("method")
    if family == "pixart":
        assert all(0 <= s <= 100 for s in scores), scores
        assert table.loc["qat", "clip_score"] == pytest.approx(scores[2])  # the table's column
        assert "| CLIP score |" in (repo / "reports/comparison.md").read_text()
    else:
        assert scores == [None] * 4 and "clip_score" not in table.columns
    tune = json.loads((repo / "reports/tune.json").read_text())
    if family == "sd3":
        assert set(tune["chosen"]) >= {"qat", "fraqat"} and tune["losses"]["qat"]["0.001"] > 0
    if family == "sana":  # a second repro has nothing to do
        again = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo,
                               env=env_for(repo), capture_output=True, text=True)
        assert "Running stage" not in again.stdout


# --- bad input: one line, exit 2, nothing written ----------------------------------------------

def _cli(root: Path, raw: dict, stage: str = "calibrate"):
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return CliRunner().invoke(app, [stage, "--params", str(root / "params.yaml")])


@pytest.mark.parametrize("case", ["unknown-model", "wrong-family", "no-folder",
                                  "missing-prompts", "empty-prompts", "no-reference",
                                  "odd-resolution"])
def test_bad_input_stops_with_one_line(case, tiny_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "data" / "calibration.safetensors"
    earlier.parent.mkdir()
    earlier.write_bytes(b"an earlier output")
    raw = profile("sana", tiny_pipeline_dir("sana"))
    if case == "unknown-model":
        raw["model"] = "sdxl"
    elif case == "wrong-family":
        raw["model_path"] = str(tiny_pipeline_dir("pixart"))
    elif case == "no-folder":
        raw["model_path"] = str(tmp_path / "nowhere")
    elif case == "missing-prompts":
        raw["prompts_path"] = str(tmp_path / "prompts.txt")
    elif case == "empty-prompts":
        (tmp_path / "prompts.txt").write_text("\n  \n")
        raw["prompts_path"] = str(tmp_path / "prompts.txt")
    elif case == "no-reference":
        raw["eval"]["reference_path"] = str(tmp_path / "real")
    else:
        raw["resolution"] = 40
    result = _cli(tmp_path, raw)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("params.yaml: "), result.output
    assert {"unknown-model": "model", "wrong-family": "PixArtSigmaPipeline",
            "no-folder": "model_index.json", "missing-prompts": "not a file",
            "empty-prompts": "no prompt", "no-reference": "eval.reference_path",
            "odd-resolution": "multiple of 16"}[case] in lines[0]
    assert earlier.read_bytes() == b"an earlier output"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == \
        ["calibration.safetensors", "params.yaml"] + (["prompts.txt"] if case ==
                                                        "empty-prompts" else [])


def test_pipeline_profile_overrides_params_yaml():
    from fraqat.params import parse_params

    params = parse_params(profiles.merged(PROFILE))
    assert params.resolution == 32 and params.smoke


def test_default_prompts_are_varied():
    from fraqat.models.folder import read_prompts

    prompts = read_prompts(None)
    assert len(prompts) == len(set(prompts)) >= 16
    assert len({p.split()[1] for p in prompts}) >= 16  # different subjects, not one template


def test_reference_images_load_as_rgb_in_range(tmp_path):
    import numpy as np
    from PIL import Image

    from fraqat.errors import FraqatError
    from fraqat.eval.pipeline import load_reference_images

    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    images = load_reference_images(tmp_path, 32)
    assert images.shape == (3, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert torch.allclose(images[1], torch.full_like(images[1], 60 / 127.5 - 1))
    with pytest.raises(FraqatError, match="none: missing"):
        load_reference_images(tmp_path / "none", 32)
