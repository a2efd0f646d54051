"""The export stage on a scratch tree: teacher -> calibrated W4A8 run -> data/export + report."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from fraqat.errors import FraqatError
from fraqat.export import verification
from fraqat.quant.layers import calibrate_activations
from tests.export.tiny import tensor_names

pytest.importorskip("diffusers")


@pytest.fixture()
def scratch(tmp_path, monkeypatch):
    from fraqat import paths
    from fraqat.data import PROMPTS, prompt_for
    from fraqat.io import save_tensors
    from fraqat.models.registry import build_tiny_sana
    from fraqat.params import parse_params
    from fraqat.quant.layers import QuantConfig
    from fraqat.train.runs import quantized_copy, save_run

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    teacher = build_tiny_sana(32, 1, 2, PROMPTS).eval()
    teacher.save_pretrained(paths.TEACHER, meta={"model": "tiny-sana"})
    g = torch.Generator().manual_seed(0)
    calib = {"x_t": torch.randn(32, 1, 8, 8, generator=g), "t": torch.rand(32, generator=g),
             "labels": torch.randint(0, 10, (32,), generator=g)}
    save_tensors(paths.CALIBRATION, calib)
    params = parse_params({"seeds": [0], "export": {"num_check_samples": 8}})
    config = QuantConfig.from_params(params)
    model = quantized_copy(teacher, config)

    def forward(tr, sl):
        hidden, mask = model.encode([prompt_for(y) for y in calib["labels"][sl]])
        model.predict(calib["x_t"][sl], calib["t"][sl], hidden, mask)

    calibrate_activations(model.transformer, [slice(0, 16), slice(16, 32)], forward)
    save_run(paths.run_dir("fraqat", 0), model, config, {"method": "fraqat"})
    from fraqat.stages import convert

    convert.run(params)
    return params


def test_stage_writes_verified_export(scratch):
    from fraqat import paths
    from fraqat.stages import export

    export.run(scratch)
    out = paths.EXPORT
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.encodings",
                                                     "model.onnx"]
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads(paths.EXPORT_REPORT.read_text())
    n = manifest["num_quantized_layers"]
    assert (manifest["bits"], manifest["act_bits"], manifest["opset"]) == (4, 8, 21)
    assert manifest["weight_containers"] == {"INT4": n}
    assert manifest["packed_bytes"] < manifest["fp32_bytes"] / 5
    assert report["passed"] and report["failures"] == []
    assert report["weights"]["code_mismatches"] == 0
    assert report["qdq_nodes"]["quantize"] == manifest["num_activation_tensors"] < n
    sem = report["per_tensor_semantics"]
    assert sem["tensors_also_read_by_float_ops"]  # the residual stream into cross-attention
    assert sem["rel_l2_error"] <= sem["rel_l2_tolerance"] == 0.01
    assert sem["layer_input_rel_l2_error"] > sem["rel_l2_error"]
    model = onnx.load(out / "model.onnx")
    encodings = json.loads((out / "model.encodings").read_text())
    assert {e["name"] for e in encodings["param_encodings"]} <= tensor_names(model)


def test_stage_failing_check_leaves_no_export(scratch, monkeypatch):
    from fraqat import paths
    from fraqat.stages import export

    monkeypatch.setattr(verification, "count_code_mismatches", lambda model, tr: (3, 100))
    with pytest.raises(FraqatError, match="3 weight codes differ") as err:
        export.run(scratch)
    assert "\n" not in str(err.value)
    assert not paths.EXPORT.exists() and not paths.EXPORT_REPORT.exists()
    assert [p.name for p in paths.DATA.iterdir() if p.name.startswith(".export")] == []


def test_stage_refuses_a_run_trained_without_per_tensor_quantizers(scratch):
    from fraqat import paths
    from fraqat.io import read_json, write_json
    from fraqat.stages import export

    info = paths.run_dir("fraqat", 0) / "quant.json"
    write_json(info, {k: v for k, v in read_json(info).items() if k != "tensor_quantizers"})
    with pytest.raises(FraqatError, match="before per-tensor activation quantizers"):
        export.run(scratch)
    assert not paths.EXPORT.exists() and not paths.EXPORT_REPORT.exists()
