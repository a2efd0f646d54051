"""ONNX models on disk and in onnxruntime, past protobuf's 2 GB limit.

A protobuf message cannot be serialized beyond 2 GB, so an FP32 transformer over ~500 M
parameters (Sana-600M: 2.4 GB) cannot be one ``.onnx`` file. ONNX's *external data* stores
each large tensor's bytes in a side file (``model.onnx.data``, offsets in the graph), the
layout onnxruntime, the ONNX checker, AIMET and QNN's converter all load from a path.
:func:`save_model` switches to it above :data:`EXTERNAL_DATA_BYTES` (or when asked);
:func:`check_model` and :func:`session` route big in-memory models through a temporary
external-data copy, since both need a path beyond the limit.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_BYTES = 1 << 30  # margin below the limit: the graph's own bytes come on top
_MIN_EXTERNAL_TENSOR = 1024    # small tensors (scales, zero points) stay inline


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers' raw data (what decides whether a model fits one protobuf)."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_model(model: onnx.ModelProto, path: str | Path,
               external: bool | None = None) -> list[Path]:
    """Write ``model`` to ``path``; returns the files written (``path`` [+ ``path.data``]).

    ``external=None`` picks external data when the tensors exceed :data:`EXTERNAL_DATA_BYTES`.
    With external data the in-memory ``model`` afterwards points to the side file (its tensors'
    bytes are moved out, not copied, to keep host memory at one copy).
    """
    path = Path(path)
    if external is None:
        external = tensor_bytes(model) > EXTERNAL_DATA_BYTES
    if not external:
        onnx.save_model(model, path)
        return [path]
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=_MIN_EXTERNAL_TENSOR)
    return [path, data]


def check_model(model: onnx.ModelProto) -> None:
    """``onnx.checker`` with full shape inference, through a file when the model is big."""
    if tensor_bytes(model) <= EXTERNAL_DATA_BYTES:
        onnx.checker.check_model(model, full_check=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        save_model(copy, Path(tmp) / "model.onnx", external=True)
        onnx.checker.check_model(str(Path(tmp) / "model.onnx"), full_check=True)


def session(model: onnx.ModelProto | str | Path, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session (default optimizations) from a model or a path."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(str(model), opts, providers=providers)
    if tensor_bytes(model) <= EXTERNAL_DATA_BYTES:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
    with tempfile.TemporaryDirectory() as tmp:  # ORT reads the data while building the session
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        save_model(copy, Path(tmp) / "model.onnx", external=True)
        del copy
        return ort.InferenceSession(str(Path(tmp) / "model.onnx"), opts, providers=providers)


def feed(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in inputs.items()}
