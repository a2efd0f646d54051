"""Stage ``export``: the trained W4A8 transformer as ONNX QDQ + AIMET encodings for Qualcomm HTP.

Reads the run ``export.method`` / ``seeds[0]`` (its graph and activation encodings) and its
converted model ``data/converted`` (the integer weight codes stored), and writes
``data/export/`` (``model.onnx``, ``model.encodings``, ``manifest.json``) as one atomic
directory, and ``reports/export.json``.
The export is verified before it is kept: onnxruntime against the PyTorch fake-quant forward
on ``export.num_check_samples`` calibration inputs, weight codes compared exactly (see
:class:`fraqat.export.Tolerance`), and the run must have been trained with the per-tensor
activation quantizers the device runs (the plan in its ``quant.json`` equals the loaded one).
A failed check raises one line and leaves no export.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import onnxruntime
import torch

from fraqat import export, paths
from fraqat.artifacts import load_calibration
from fraqat.data import prompt_for
from fraqat.errors import FraqatError
from fraqat.io import atomic_path, read_json, write_json
from fraqat.models.families import batched_inputs
from fraqat.models.registry import TextToImage
from fraqat.params import Params
from fraqat.quant.converted import QUANT_CONFIG, load_converted
from fraqat.quant.tensor_quantizers import plan_of
from fraqat.train.runs import load_run

log = logging.getLogger(__name__)

EXAMPLE_BATCH = 2  # traced batch; the exported batch dimension is dynamic


@torch.no_grad()
def transformer_inputs(model: TextToImage, calib: dict[str, torch.Tensor],
                       n: int) -> dict[str, torch.Tensor]:
    """The first ``n`` calibration samples as the transformer's forward kwargs (t -> 1000 t)."""
    if n > len(calib["t"]):
        raise FraqatError(f"export.num_check_samples={n} exceeds the {len(calib['t'])} "
                          "calibration samples (allowed: 1 to the calibration set size)")
    hidden, mask = model.encode([prompt_for(y) for y in calib["labels"][:n]])
    return {"hidden_states": calib["x_t"][:n], "encoder_hidden_states": hidden.detach(),
            "timestep": calib["t"][:n] * 1000.0, "encoder_attention_mask": mask}


def pipeline_inputs(model: TextToImage, calib: dict[str, torch.Tensor],
                    n: int) -> dict[str, torch.Tensor] | None:
    """A real pipeline's first ``n`` calibration points as batched transformer kwargs."""
    if n > len(calib["t"]):
        raise FraqatError(f"export.num_check_samples={n} exceeds the {len(calib['t'])} "
                          "calibration samples (allowed: 1 to the calibration set size)")
    labels = calib["labels"][:n]
    return batched_inputs(model.family, model.transformer, calib["x_t"][:n], calib["t"][:n],
                          tuple(c[labels] for c in model.prompt_conditioning([])))


def skip(params: Params, reason: str) -> None:
    """No export for this model: say why in the manifest and the report (both written)."""
    with atomic_path(paths.EXPORT) as out:
        out.mkdir()
        write_json(out / "manifest.json", {"model": params.model, "skipped": reason})
    write_json(paths.EXPORT_REPORT, {"model": params.model, "passed": None, "skipped": reason})
    log.warning("export skipped: %s", reason)


def trained_semantics(run_info: dict, transformer: torch.nn.Module) -> list[str]:
    """A failure line if the run was trained with other activation quantizers than it loads."""
    trained = run_info.get("tensor_quantizers")
    if trained is None:
        return ["the run was trained before per-tensor activation quantizers (retrain it)"]
    if trained != plan_of(transformer):
        return ["the run's tensor_quantizers in quant.json differ from the loaded model's"]
    return []


def converted_of(run_dir: Path) -> torch.nn.Module:
    """The converted model of ``run_dir`` (its weight codes are what the export stores)."""
    info = read_json(paths.CONVERTED / QUANT_CONFIG) if (
        paths.CONVERTED / QUANT_CONFIG).is_file() else {}
    if info.get("run") != str(run_dir):
        raise FraqatError(f"{paths.CONVERTED} is not the conversion of {run_dir} (it is of "
                          f"{info.get('run')}; run `fraqat convert` first)")
    return load_converted(paths.CONVERTED)


def manifest(params: Params, run_info: dict, result: export.ExportResult,
             sizes: dict, files: list[Path], inputs: dict[str, torch.Tensor]) -> dict:
    cfg = run_info.get("config", {})
    containers = Counter(result.lowered.weight_dtypes.values())
    return {"model": params.model, "method": params.export.method, "seed": params.seeds[0],
            "bits": cfg.get("weight_bits"), "act_bits": cfg.get("act_bits"),
            "granularity": cfg.get("granularity"), "opset": params.export.opset,
            "weight_dtype": params.export.weight_dtype, "weight_containers": dict(containers),
            "num_quantized_layers": len(set(result.weights) | set(result.acts)),
            "num_weight_quantized": len(result.weights),
            "num_activation_quantized": len(result.acts),
            "num_activation_tensors": len(result.lowered.dequantized),
            "encodings_version": export.AIMET_VERSION,
            "inputs": {k: ["batch", *v.shape[1:]] for k, v in inputs.items()},
            "output": export.OUTPUT_NAME, "onnx_bytes": sum(f.stat().st_size for f in files),
            **sizes, "files": [f.name for f in files] + ["model.encodings", "manifest.json"]}


def run(params: Params) -> None:
    e = params.export
    run_dir = paths.run_dir(e.method, params.seeds[0])
    model = load_run(run_dir, paths.TEACHER)
    calib = load_calibration()
    inputs: dict[str, torch.Tensor] | None = None
    if params.model == "tiny-sana":
        inputs = transformer_inputs(model, calib, e.num_check_samples)
    elif (inputs := pipeline_inputs(model, calib, e.num_check_samples)) is None:
        skip(params, f"the {model.family.name} transformer's call is not exported yet "
             "(allowed: the sana family and the embedded default)")
        return
    example = {k: v[:EXAMPLE_BATCH] for k, v in inputs.items()}
    weights = export.packed_weight_specs(converted_of(run_dir))
    start = time.perf_counter()
    with atomic_path(paths.EXPORT) as out:
        out.mkdir()
        result = export.export_transformer(model.transformer, example, e.opset,
                                           e.weight_dtype, weights)
        report = export.verify(result, model.transformer, inputs)
        run_info = read_json(Path(run_dir) / "quant.json")
        report["failures"] += trained_semantics(run_info, model.transformer)
        if report["failures"]:
            raise FraqatError(f"export of {run_dir} failed its checks: "
                              + "; ".join(report["failures"]))
        sizes = export.size_report(model.transformer, result.weights)
        files = export.save_model(result.model, out / "model.onnx")
        (out / "model.encodings").write_text(json.dumps(result.encodings, indent=2) + "\n")
        info = manifest(params, run_info, result, sizes, files, inputs)
        write_json(out / "manifest.json", info)
    report.update(run=str(run_dir), num_check_samples=e.num_check_samples, sizes=sizes,
                  onnx_bytes=info["onnx_bytes"], onnxruntime=onnxruntime.__version__,
                  seconds=time.perf_counter() - start, passed=True)
    write_json(paths.EXPORT_REPORT, report)
    log.info("export: %d quantized layers, max abs error %.3g (tol %.3g), per-tensor gate "
             "%.2g (tol %g), %d weight-code mismatches, %d -> %d bytes -> %s",
             info["num_quantized_layers"], report["output"]["max_abs_error"],
             report["output"]["max_abs_tolerance"],
             report["per_tensor_semantics"]["rel_l2_error"],
             report["per_tensor_semantics"]["rel_l2_tolerance"],
             report["weights"]["code_mismatches"], sizes["fp32_bytes"],
             sizes["packed_bytes"], paths.EXPORT)
