"""The convert stage: a trained run -> data/converted, small, 0644, equal outputs, one-call load."""

from __future__ import annotations

import json
import stat

import pytest
import torch

from fraqat.errors import FraqatError
from tests.stages.test_export import scratch  # noqa: F401 - the fixture (a trained tiny run)


def test_stage_writes_a_packed_model_under_a_third_of_the_run(scratch):  # noqa: F811
    from fraqat import load_converted, paths
    from fraqat.models.registry import dummy_inputs
    from fraqat.quant.packed import packed_layers
    from fraqat.train.runs import load_run

    report = json.loads(paths.CONVERT_REPORT.read_text())  # the fixture ran `convert`
    assert report["max_abs_output_difference"] == 0.0
    assert report["converted_bytes"] <= 0.3 * report["run_bytes"], report
    assert report["containers"] == ["int4"] and 4 < report["bits_per_quantized_weight"] < 4.5
    for f in paths.CONVERTED.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f

    converted = load_converted(paths.CONVERTED)
    fake_quant = load_run(paths.run_dir(scratch.export.method, 0), paths.TEACHER).transformer
    inputs = dummy_inputs(fake_quant, batch=3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(converted(**inputs)[0], fake_quant(**inputs)[0])
    layer = dict(packed_layers(converted))["proj_out"]
    assert layer.weight_packed.dtype == torch.uint8
    assert layer.weight_packed.numel() == -(-layer.numel // 2)


def test_export_refuses_a_conversion_of_another_run(scratch):  # noqa: F811
    from fraqat import paths
    from fraqat.io import read_json, write_json
    from fraqat.stages import export

    info = read_json(paths.CONVERTED / "quantization_config.json")
    write_json(paths.CONVERTED / "quantization_config.json", {**info, "run": "data/runs/x"})
    with pytest.raises(FraqatError, match="is not the conversion of"):
        export.run(scratch)
