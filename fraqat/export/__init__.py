"""Export a FraQAT-quantized diffusers transformer for Qualcomm's HTP: ONNX QDQ + AIMET encodings.

What is written
    ``model.onnx``: the transformer's forward (``hidden_states``, ``encoder_hidden_states``,
    ``timestep``, ``encoder_attention_mask`` -> ``sample``; batch dimension dynamic). The prompt
    encoder stays outside, as a real text encoder would. Every quantized weight is an integer
    initializer (the trained codes, :func:`fraqat.quant.core.integer_codes`) + scale feeding a
    ``DequantizeLinear`` whose output is named ``<layer>.weight``; every quantized activation
    *tensor* gets one ``QuantizeLinear``/``DequantizeLinear`` pair with its calibrated INT8
    scale/zero point, read by all of the tensor's readers. Past 2 GB of tensors the weights go
    to ``model.onnx.data`` beside it (ONNX external data).
    ``model.encodings``: the same numbers in AIMET's encoding format 1.0.0, keyed by those ONNX
    tensor names, for ``qnn-onnx-converter --quantization_overrides`` and aimet-onnx.

The modules, in the order an export runs
    :mod:`~fraqat.export.specs`        integer codes and qparams per layer, ONNX containers
    :mod:`~fraqat.export.graph`        trace with marker nodes, lower them to QDQ
    :mod:`~fraqat.export.encodings`    the AIMET encodings file
    :mod:`~fraqat.export.float_graph`  the float graph + encodings hand-off (``strip_qdq``)
    :mod:`~fraqat.export.files`        saving / loading / running past protobuf's 2 GB
    :mod:`~fraqat.export.verification` onnxruntime vs PyTorch, the tolerances, sizes
"""

from fraqat.export.encodings import AIMET_VERSION, aimet_encodings
from fraqat.export.files import check_model, save_model, session
from fraqat.export.float_graph import strip_qdq
from fraqat.export.graph import INPUT_NAMES, OUTPUT_NAME, ExportResult, Lowered, export_transformer
from fraqat.export.specs import (
    OPSET_21,
    ActSpec,
    WeightSpec,
    collect_specs,
    packed_weight_specs,
)
from fraqat.export.verification import (
    Tolerance,
    count_code_mismatches,
    onnx_weight_codes,
    qdq_counts,
    run_onnx,
    size_report,
    torch_forward,
    verify,
)

__all__ = ["AIMET_VERSION", "INPUT_NAMES", "OPSET_21", "OUTPUT_NAME", "ActSpec", "ExportResult",
           "Lowered", "Tolerance", "WeightSpec", "aimet_encodings", "check_model",
           "collect_specs", "count_code_mismatches", "export_transformer", "onnx_weight_codes",
           "packed_weight_specs", "qdq_counts", "run_onnx", "save_model", "session",
           "size_report", "strip_qdq", "torch_forward", "verify"]
