"""The per-model projection: exact on the measured model, scaled by the stated rules."""

from __future__ import annotations

import json

import pytest

from benchmarks.model_needs import GIB, PAPER_RUN, param_counts, project

SANA = 591_747_872  # SanaTransformer2DModel at the Sana-600M config


def measured(train_peak_gib: float = 40.0, eval_peak_gib: float = 20.0) -> dict:
    """A stage run as benchmarks/pipeline_stages.py writes it (numbers made up)."""
    def row(stage, wall, peak=1.0):
        return {"stage": stage, "wall_s": wall, "peak_allocated_gib": peak,
                "peak_reserved_gib": peak, "start_allocated_gib": 0.0, "output_bytes": 1,
                "output_files": 1}
    return {"meta": {"device": "NVIDIA H100 80GB HBM3", "date": "2026-11-28 05:00 UTC",
                     "torch": "2.11.0", "diffusers": "0.42.1"},
            "run": {"resolution": 1024, "batch": 8, "num_samples": 64, "probe": 16,
                    "validation": 8, "images": 4, "eval_steps": 4, "latent": [32, 32, 32],
                    "depth_width": 28 * 1152,
                    "params": {"transformer": SANA, "vae": 300_000_000,
                               "text_encoder": 200_000_000},
                    "train_steps": {"ptq": 0, "qat": 40, "fraqat": 40},
                    "train_wall_seconds": {"ptq": 3.0, "qat": 12.0, "fraqat": 14.0}},
            "stages": [row("calibrate", 22.0, 8.0), row("teacher", 8.0),
                       row("train ptq", 5.0, 10.0), row("train qat", 20.0, train_peak_gib),
                       row("evaluate fp", 16.0, eval_peak_gib), row("evaluate qat", 16.0)]}


@pytest.fixture(scope="module")
def needs() -> dict:
    return project(measured())


def test_the_measured_model_projects_to_its_own_measurement(needs):
    sana = needs["models"][0]
    assert sana["model"] == "Sana-600M" and sana["transformer_params"] == SANA
    assert PAPER_RUN["batch"] == 8 and sana["tokens"] == 1024
    assert sana["train_gib"] == pytest.approx(40.0)  # 16 B/param + the same activations
    assert sana["hours"]["train"] == pytest.approx(13 / 40 * PAPER_RUN["steps"] * 2 / 3600)
    assert sana["hours"]["teacher"] == pytest.approx(8 / 80 * PAPER_RUN["points"] / 3600)
    assert sana["disk_gb"]["teacher"] == pytest.approx(2 * PAPER_RUN["points"] * 32**3 / 1e9)


def test_larger_models_scale_by_params_and_tokens(needs):
    by = {m["model"]: m for m in needs["models"]}
    flux, sana = by["FLUX.1-schnell"], by["Sana-600M"]
    assert param_counts()["FLUX.1-schnell"]["transformer"] > 11e9
    assert flux["tokens"] == 4096 + 256 and by["PixArt-Σ"]["tokens"] == 4096
    assert flux["train_gib"] > flux["train_static_gib"] == 16 * flux["transformer_params"] / GIB
    ratio = flux["transformer_params"] * flux["tokens"] / (SANA * 1024)
    assert flux["hours"]["train"] == pytest.approx(sana["hours"]["train"] * ratio)
    # the whole fp32 pipeline is on the GPU while calibrating / evaluating
    assert by["SD3.5-Medium"]["infer_gib"] > 4 * by["SD3.5-Medium"]["pipeline_params"] / GIB


def test_readme_block_renders_the_projection(tmp_path, needs):
    from pipelines.tools.readme import needs as block

    result = {**measured(), "needs": needs}
    path = tmp_path / "benchmarks/results/pipeline-stages-sana-600m-h100.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(result))
    text = block(tmp_path)
    assert "| Sana-600M | 0.59 B | 1,024 | 40 (9) |" in text and "FLUX.1-schnell" in text
    assert "NVIDIA H100 80GB HBM3" in text and "325 ms per training step" in text
    assert "Pending" in block(tmp_path / "nowhere")
    tiny = tmp_path / "cpu-only/benchmarks/results/pipeline-stages-sana-600m-cpu.json"
    tiny.parent.mkdir(parents=True)
    tiny.write_text(json.dumps({**result, "meta": {**result["meta"], "tiny": True}}))
    assert "Pending" in block(tmp_path / "cpu-only")  # a CPU smoke run is not a measurement
    partial = tmp_path / "crashed/benchmarks/results/pipeline-stages-sana-600m-h100.json"
    partial.parent.mkdir(parents=True)
    partial.write_text(json.dumps({"meta": result["meta"], "complete": False, "stages": []}))
    assert "Pending" in block(tmp_path / "crashed")  # rows of a run that stopped midway


def test_library_specs_match_the_full_size_configs():
    """fraqat.needs.SPECS (what ``fraqat plan`` reads) against meta-device builds."""
    from fraqat.needs import SPECS

    counts = param_counts()
    for spec in SPECS.values():
        c = counts[spec.label]
        assert (spec.transformer, spec.pipeline) == (c["transformer"], c["pipeline"])
        assert spec.depth * spec.width == c["depth_width"]
