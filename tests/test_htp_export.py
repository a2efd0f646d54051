"""fraqat.htp_export + the export stage: ONNX QDQ + AIMET encodings of a tiny quantized Sana.

The aimet-onnx test is skipped in the project venv (aimet-onnx pulls ~0.6 GB beside torch, the
full stack ~6 GB); it passed in a scratch venv with ``pip install aimet-onnx==2.42.0``.
"""

from __future__ import annotations

import copy
import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from torch import nn

from fraqat import htp_export as hx
from fraqat.errors import FraqatError
from fraqat.models import tiny_sana_config
from fraqat.modules import QuantConfig, calibrate_activations, quant_layers, quantize_model
from fraqat.quant import integer_codes

diffusers = pytest.importorskip("diffusers")

TINY_SANA = tiny_sana_config(width=32, layers=1, heads=2, patch_size=1)


def inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 6, dtype=torch.long)
    mask[:, 4:] = 0  # padded prompt tokens, as the prompt encoder makes them
    return {"hidden_states": torch.randn(batch, 1, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(batch, 6, 32, generator=g),
            "timestep": torch.rand(batch, generator=g) * 1000,
            "encoder_attention_mask": mask}


@pytest.fixture(scope="module")
def base() -> nn.Module:
    torch.manual_seed(0)
    return diffusers.SanaTransformer2DModel(**TINY_SANA).eval()


def quantized(base: nn.Module, **kw) -> nn.Module:
    model = quantize_model(copy.deepcopy(base), QuantConfig(**{"weight_bits": 4, "act_bits": 8,
                                                               **kw}))
    calibrate_activations(model, [inputs(8, s) for s in range(3)],
                          lambda m, b: m(**b, return_dict=False))
    return model.eval()


@pytest.fixture(scope="module", params=["tensor", "channel"])
def exported(request, base):
    model = quantized(base, granularity=request.param)
    return model, hx.export_transformer(model, inputs(2, 10))


def tensor_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    return ({i.name for i in g.input} | {t.name for t in g.initializer}
            | {o for n in g.node for o in n.output})


def test_onnxruntime_matches_pytorch(exported):
    model, res = exported
    check = inputs(5, 99)  # another batch size than the traced one: batch is dynamic
    report = hx.verify(res, model, check)
    assert report["failures"] == []
    out = report["output"]
    assert out["max_abs_error"] <= out["max_abs_tolerance"]
    assert out["rel_l2_error"] <= 0.01
    assert report["activations"]["max_step_difference"] <= 1
    assert hx.run_onnx(res.model, check).shape == (5, 1, 8, 8)


def test_weight_codes_are_the_trained_integer_codes(exported):
    model, res = exported
    assert hx.count_code_mismatches(res.model, model) == (0, sum(
        layer.weight.numel() for _, layer in quant_layers(model)))
    inits = {t.name: t for t in res.model.graph.initializer}
    for name, layer in quant_layers(model):
        codes, qp = integer_codes(layer.weight.detach(), 4, granularity=layer.granularity)
        stored = inits[f"{name}.weight_quantized"]
        assert stored.data_type == TensorProto.INT4  # packed: two codes per byte
        assert np.array_equal(onnx.numpy_helper.to_array(stored).astype(np.int32),
                              codes.numpy())
        scale = onnx.numpy_helper.to_array(inits[f"{name}.weight_scale"])
        assert np.array_equal(scale.reshape(-1), qp.scale.reshape(-1).numpy())


def test_qdq_nodes_one_pair_per_quantized_layer(exported):
    model, res = exported
    n = len(list(quant_layers(model)))
    assert hx.qdq_counts(res.model) == {"quantize": n, "dequantize_weight": n,
                                        "dequantize_activation": n}
    assert not any(node.domain == "fraqat" for node in res.model.graph.node)
    assert max(i.version for i in res.model.opset_import if i.domain in ("", "ai.onnx")) == 21


def test_encodings_name_onnx_tensors_with_trained_numbers(exported):
    model, res = exported
    enc = json.loads(json.dumps(res.encodings))  # what the file holds
    assert enc["version"] == "1.0.0"
    names = tensor_names(res.model)
    params, acts = enc["param_encodings"], enc["activation_encodings"]
    assert {p["name"] for p in params} | {a["name"] for a in acts} <= names
    assert {(p["bw"], p["is_sym"], p["dtype"]) for p in params} == {(4, True, "INT")}
    assert {(a["bw"], a["enc_type"]) for a in acts} == {(8, "PER_TENSOR")}
    layers = dict(quant_layers(model))
    by_name = {p["name"]: p for p in params}
    for name, layer in layers.items():
        p = by_name[f"{name}.weight"]
        _, qp = integer_codes(layer.weight.detach(), 4, granularity=layer.granularity)
        assert np.array_equal(np.float32(p["scale"]), qp.scale.reshape(-1).numpy())
        assert set(p["offset"]) == {-8}
        assert p["enc_type"] == ("PER_TENSOR" if layer.granularity == "tensor"
                                 else "PER_CHANNEL")
    # each activation encoding is the calibrated quantizer of the layers reading that tensor
    for name, tensor in res.lowered.act_tensors.items():
        a = next(a for a in acts if a["name"] == tensor)
        q = layers[name].input_quantizer
        assert np.float32(a["scale"][0]) == np.float32(q.scale.item())
        assert a["offset"] == [-int(q.zero_point)] and a["is_sym"] is False


def test_per_group_weights_are_blocked_dequantize(base):
    model = quantized(base, granularity="group", group_size=16)
    res = hx.export_transformer(model, inputs(2, 10))
    assert hx.verify(res, model, inputs(4, 7))["failures"] == []
    kinds = Counter(p["enc_type"] for p in res.encodings["param_encodings"])
    assert kinds["PER_BLOCK"] > 0  # Linear/1x1 conv with in > 16
    assert kinds["PER_CHANNEL"] > 0  # one group per row (e.g. the 3x3 depthwise conv)
    assert all(p["block_size"] == 16 for p in res.encodings["param_encodings"]
               if p["enc_type"] == "PER_BLOCK")
    with pytest.raises(FraqatError, match="span kernel positions"):
        hx.export_transformer(quantized(base, granularity="group", group_size=4),
                              inputs(2, 10))


def test_keep_8bit_layers_and_int8_container(base):
    model = quantized(base, keep_8bit=["proj_out"])
    res = hx.export_transformer(model, inputs(2, 10), opset=20, weight_dtype="int8")
    assert hx.verify(res, model, inputs(3, 5))["failures"] == []
    bw = {p["name"]: p["bw"] for p in res.encodings["param_encodings"]}
    assert bw.pop("proj_out.weight") == 8 and set(bw.values()) == {4}
    codes = hx.onnx_weight_codes(res.model)
    assert set(res.lowered.weight_dtypes.values()) == {"INT8"}
    assert np.abs(codes["proj_out"]).max() > 7  # 8-bit grid
    assert max(np.abs(c).max() for n, c in codes.items() if n != "proj_out") <= 7


def test_layers_sharing_an_input_with_different_scales_get_their_own_copy(base):
    model = quantized(base)  # attn1.to_q/k/v read one tensor, calibrated alike
    layers = dict(quant_layers(model))
    with torch.no_grad():
        layers["transformer_blocks.0.attn1.to_k"].input_quantizer.scale.mul_(1.25)
    res = hx.export_transformer(model, inputs(2, 10))
    assert hx.verify(res, model, inputs(3, 4))["failures"] == []
    names = {a["name"] for a in res.encodings["activation_encodings"]}
    qkv = [f"transformer_blocks.0.attn1.to_{c}" for c in "qkv"]
    assert {f"{n}.input" for n in qkv} <= names
    assert res.lowered.act_tensors[qkv[0]] != res.lowered.act_tensors[qkv[1]]


def test_unexportable_configs_fail_before_tracing(base):
    uncalibrated = quantize_model(copy.deepcopy(base), QuantConfig(weight_bits=4, act_bits=8))
    with pytest.raises(FraqatError, match="int4 needs export.opset >= 21"):
        hx.export_transformer(uncalibrated, inputs(2, 10), opset=20)
    with pytest.raises(FraqatError, match="never calibrated"):
        hx.export_transformer(uncalibrated, inputs(2, 10))
    fractional = quantize_model(copy.deepcopy(base), QuantConfig(weight_bits=4.5))
    with pytest.raises(FraqatError, match="fractional"):
        hx.export_transformer(fractional, inputs(2, 10))


def test_strip_qdq_is_the_float_graph_the_encodings_describe(exported):
    model, res = exported
    float_model = hx.strip_qdq(res.model)
    onnx.checker.check_model(float_model, full_check=True)
    ops = Counter(n.op_type for n in float_model.graph.node)
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == 0
    names = tensor_names(float_model)
    enc = res.encodings
    assert {e["name"] for e in enc["param_encodings"] + enc["activation_encodings"]} <= names
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in float_model.graph.initializer}
    for name, layer in quant_layers(model):
        assert np.array_equal(weights[f"{name}.weight"],
                              layer.quantized_weight().detach().numpy())


def test_aimet_onnx_simulates_the_encodings(exported, tmp_path):
    """AIMET reads the encodings as written, and simulates the graph HTP will run."""
    aimet = pytest.importorskip("aimet_onnx.quantsim")
    model, res = exported
    sim = aimet.QuantizationSimModel(hx.strip_qdq(res.model), param_type="int4",
                                     activation_type="int8")
    path = tmp_path / "model.encodings"
    path.write_text(json.dumps(res.encodings))
    # not strict: AIMET's default config quantizes every op output and weights per channel,
    # FraQAT only layer inputs (and per tensor here), so "enabled" and the encoding type may
    # differ from the defaults; bit-width, symmetry and dtype must agree, the numbers below
    mismatches = aimet.load_encodings_to_sim(sim, str(path), strict=False)
    fields = ("dtype_mismatch", "bitwidth_mismatch", "is_symmetric_mismatch")
    assert [m for m in mismatches if any(getattr(m, f, None) for f in fields)] == []
    enabled = {n for n, q in sim.qc_quantize_op_dict.items() if q.enabled}
    encoded = res.encodings["param_encodings"] + res.encodings["activation_encodings"]
    assert enabled == {e["name"] for e in encoded}
    check = inputs(4, 3)
    got = sim.session.run(None, {k: v.numpy() for k, v in check.items()})[0]
    want = hx.run_onnx(hx.per_tensor_semantics(res.model, res.lowered), check)
    assert np.linalg.norm(got - want) <= 0.01 * np.linalg.norm(want)


# ---------------------------------------------------------------------------------------------
# The stage, on a scratch tree: teacher -> calibrated W4A8 run -> data/export + report


@pytest.fixture()
def scratch(tmp_path, monkeypatch):
    from fraqat import paths
    from fraqat.data import PROMPTS, prompt_for
    from fraqat.io import save_tensors
    from fraqat.models import build_tiny_sana
    from fraqat.modules import QuantConfig
    from fraqat.params import parse_params
    from fraqat.runs import quantized_copy, save_run

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
    assert report["qdq_nodes"]["quantize"] == n
    model = onnx.load(out / "model.onnx")
    encodings = json.loads((out / "model.encodings").read_text())
    assert {e["name"] for e in encodings["param_encodings"]} <= tensor_names(model)


def test_stage_failing_check_leaves_no_export(scratch, monkeypatch):
    from fraqat import paths
    from fraqat.stages import export

    monkeypatch.setattr(hx, "count_code_mismatches", lambda model, tr: (3, 100))
    with pytest.raises(FraqatError, match="3 weight codes differ") as err:
        export.run(scratch)
    assert "\n" not in str(err.value)
    assert not paths.EXPORT.exists() and not paths.EXPORT_REPORT.exists()
    assert [p.name for p in paths.DATA.iterdir() if p.name.startswith(".export")] == []
