"""fraqat.export.float_graph: the float graph + encodings hand-off, read by Qualcomm's AIMET.

The aimet-onnx check runs wherever aimet-onnx is installed (``pip install -e ".[htp]"``,
what ``.ci/run`` installs); it is skipped only outside CI (``CI`` unset) without aimet-onnx.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import onnx
import pytest

from fraqat import export as hx
from fraqat.quant.layers import quant_layers
from tests.export.tiny import inputs, tensor_names

# aimet-onnx 2.42's QuantizationSimModel vs onnxruntime on the exported QDQ graph, relative L2,
# measured on this tiny Sana (4 samples): 8.6e-8 (per-tensor weights) and 9.6e-5 (per-channel:
# AIMET re-quantizes the FP32 dequantized weights, re-rounding a few codes' last ulp); vs the
# PyTorch model 9.3e-8 / 9.6e-5. The bounds leave 10x over the worst of these (ORT) and the
# runtime-rounding tolerance of fraqat.export.Tolerance.rel_l2 (PyTorch: flips of one INT8
# step; the embedded model: 1.5e-7); a wrong scale, offset or per-tensor reading gives
# >= 7.7e-3 (the layer-view reading of this model; of the embedded one 5.7e-2).
AIMET_VS_ORT_REL_L2 = 1e-3
AIMET_VS_TORCH_REL_L2 = 1e-2


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


def aimet_quantsim():
    try:
        import aimet_onnx.quantsim as quantsim
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            raise  # CI installs the htp extra: a missing aimet-onnx is a failure there
        pytest.skip("aimet-onnx is not installed (pip install -e '.[htp]')")
    return quantsim


def rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_aimet_quantsim_reads_the_encodings_and_matches_the_export(exported, tmp_path):
    """Qualcomm's simulator takes float graph + encodings as written, and computes our model."""
    quantsim = aimet_quantsim()
    model, res = exported
    sim = quantsim.QuantizationSimModel(hx.strip_qdq(res.model), param_type="int4",
                                        activation_type="int8")
    path = tmp_path / "model.encodings"
    path.write_text(json.dumps(res.encodings))
    # not strict: AIMET's default config quantizes every op output and weights per channel,
    # FraQAT only the quantized layers' input tensors (and per tensor here), so "enabled" and
    # the encoding type may differ from its defaults; bit-width, symmetry and dtype must agree
    mismatches = quantsim.load_encodings_to_sim(sim, str(path), strict=False)
    fields = ("dtype_mismatch", "bitwidth_mismatch", "is_symmetric_mismatch")
    assert [m for m in mismatches if any(getattr(m, f, None) for f in fields)] == []
    enabled = {n for n, q in sim.qc_quantize_op_dict.items() if q.enabled}
    encoded = res.encodings["param_encodings"] + res.encodings["activation_encodings"]
    assert enabled == {e["name"] for e in encoded}
    check = inputs(4, 3)
    got = sim.session.run(None, {k: v.numpy() for k, v in check.items()})[0]
    ort_qdq = hx.run_onnx(res.model, check)
    torch_out = hx.torch_forward(model, check)
    assert rel_l2(got, ort_qdq) <= AIMET_VS_ORT_REL_L2
    assert rel_l2(got, torch_out) <= AIMET_VS_TORCH_REL_L2
