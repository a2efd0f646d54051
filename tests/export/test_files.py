"""fraqat.export.files: ONNX external data (the path models past 2 GB take), forced small."""

from __future__ import annotations

import math

import numpy as np
import onnx

from fraqat import export as hx
from fraqat.export import files
from tests.export.tiny import inputs


def test_external_data_round_trip_runs_the_same(exported, tmp_path, monkeypatch):
    model, res = exported
    check = inputs(3, 1)
    want = hx.run_onnx(res.model, check)
    float_want = hx.run_onnx(hx.strip_qdq(res.model), check)
    monkeypatch.setattr(files, "EXTERNAL_DATA_BYTES", 0)  # every model counts as "big"
    files.check_model(res.model)  # through a temporary external-data copy
    assert np.array_equal(files.session(res.model).run(None, files.feed(check))[0], want)
    written = hx.save_model(hx.strip_qdq(res.model), tmp_path / "float.onnx")
    assert [p.name for p in written] == ["float.onnx", "float.onnx.data"]
    graph_only = onnx.load(tmp_path / "float.onnx", load_external_data=False)
    big = [t for t in graph_only.graph.initializer if 4 * math.prod(t.dims) >= 1024]
    assert big and all(t.data_location == onnx.TensorProto.EXTERNAL for t in big)
    assert (tmp_path / "float.onnx").stat().st_size < written[1].stat().st_size
    onnx.checker.check_model(str(tmp_path / "float.onnx"), full_check=True)
    assert np.array_equal(hx.run_onnx(str(tmp_path / "float.onnx"), check), float_want)
    # the in-memory export saved as external data runs the same from its files
    copy = onnx.ModelProto()
    copy.CopyFrom(res.model)
    hx.save_model(copy, tmp_path / "model.onnx")
    assert np.array_equal(hx.run_onnx(str(tmp_path / "model.onnx"), check), want)
