"""Check an export against the PyTorch model it came from, and measure its size.

The exported graph must compute the trained model's function (same integer weight codes,
same activation encodings, every reader of a quantized tensor seeing its quantized value)
up to the rounding of two FP32 runtimes; :class:`Tolerance` says how close that is and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from fraqat.export.files import feed, session
from fraqat.export.graph import OUTPUT_NAME, ExportResult
from fraqat.export.specs import ActSpec, WeightSpec, trained_codes
from fraqat.quant.layers import quant_layers
from fraqat.quant.tensor_quantizers import layer_input_semantics


@dataclass(frozen=True)
class Tolerance:
    """How close onnxruntime must come to the PyTorch fake-quant forward, and why.

    Both evaluate the same quantized function in FP32, but with other kernels and operation
    order (ONNX ``QuantizeLinear`` divides by the scale where fraqat multiplies by its inverse;
    LayerNorm/attention reductions differ in the last ulp). A value that sits within an ulp of a
    rounding boundary then lands on the neighbouring INT8 code: a flip of exactly one step.
    Measured on the tiny Sana: the first flipping layer had 1 flip in 65,536 codes, later
    layers inherit more (at most 0.09 % of a layer's codes), never more than one step.
    Downstream flips are inherited, not made: in the Sana-600M config with random weights
    one flip in the caption projection grows to 1.6 % of the codes after cross-attention and,
    free-running over 28 blocks, to 47 % of a late depthwise conv's codes (output 2.5 %
    relative L2). So the per-layer checks are *layer-local*: PyTorch is fed the graph's
    quantized tensors (:func:`torch_forced`), and what differs then is one op's own rounding
    (measured: at most 2e-5 of a layer's codes on the Sana-600M config) or a real mismatch
    (the layers' views read instead of the tensor: half of the codes after the residual).

    * per quantized activation, at most ``max_flip_fraction`` of the layer-local codes differ
      (or ``min_flips`` codes, for tiny tensors); a wrong scale or zero point flips most codes;
    * the output's max absolute error is at most ``abs_steps`` of the largest activation step
      (one flip at the last layer's input moves an output by ``step * |w|``, with |w| < 1
      here; measured 0.23 steps) and its relative L2 error at most ``rel_l2`` (measured on
      the embedded model: 9e-4 with the layers' views quantized, 1.5e-7 with per-tensor
      quantizers and 0 flipped codes; 2.5e-2 free-running on the Sana-600M config); layer-local
      always, end to end while ``end_to_end`` (off only for models whose free-running
      divergence is their own sensitivity, e.g. random deep weights, reported instead);
    * ``per_tensor_rel_l2``: the gate on per-tensor semantics, on each quantized tensor's
      layer-local relative L2 (graph vs PyTorch). Runtime rounding alone: measured 2e-4 on
      the tiny Sana of the tests, 3.9e-4 on the Sana-600M config; PyTorch reading only the
      layers' views of a shared tensor: 1.5e-2 on the tiny Sana (end to end that reading
      is 5.7 % off on the embedded model, 5.2 % on the Sana-600M config);
    * the weight codes are compared exactly: they are stored, not recomputed.
    """

    max_flip_fraction: float = 0.01
    min_flips: int = 2
    abs_steps: float = 4.0
    rel_l2: float = 0.01
    per_tensor_rel_l2: float = 0.01
    end_to_end: bool = True


def run_onnx(model: onnx.ModelProto | str, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """Run the exported graph with onnxruntime's CPU provider, default optimizations."""
    return session(model).run([OUTPUT_NAME], feed(inputs))[0]


@torch.no_grad()
def torch_forward(transformer: nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """The PyTorch fake-quant forward the ONNX graph must reproduce."""
    return transformer(**inputs, return_dict=False)[0].float().cpu().numpy()


def run_probed(result: ExportResult, inputs: dict[str, torch.Tensor],
               layers: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """onnxruntime output plus each layer's dequantized input (one session, one run)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(result.model)
    low = result.lowered
    tensors = list(dict.fromkeys(low.dequantized[low.act_tensors[n]] for n in layers))
    for tensor in tensors:
        probe.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    out, *acts = session(probe).run([OUTPUT_NAME, *tensors], feed(inputs))
    by_tensor = dict(zip(tensors, acts, strict=True))
    return out, {n: by_tensor[low.dequantized[low.act_tensors[n]]] for n in layers}


def _hooked_forward(transformer: nn.Module, inputs: dict[str, torch.Tensor], layers: Any,
                    on_output: Any) -> np.ndarray:
    """The forward with ``on_output(layer, quantizer, args, out)`` on each named layer's input
    quantizer output (a returned tensor replaces it); the hooks are gone afterwards."""
    calling: list[str] = []
    modules: dict[str, Any] = dict(quant_layers(transformer))
    quantizers = {id(modules[n].input_quantizer): modules[n].input_quantizer for n in layers}
    hooks = [modules[n].register_forward_pre_hook(
        lambda mod, args, n=n: calling.append(n)) for n in layers]
    hooks += [q.register_forward_hook(
        lambda mod, args, out: on_output(calling[-1], mod, args, out) if calling else None)
        for q in quantizers.values()]
    try:
        return torch_forward(transformer, inputs)
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def torch_probed(transformer: nn.Module, inputs: dict[str, torch.Tensor],
                 layers: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """PyTorch output plus each layer's fake-quantized input, from forward hooks."""
    seen: dict[str, np.ndarray] = {}

    def record(name, mod, args, out):
        seen.setdefault(name, out.float().cpu().numpy())
    return _hooked_forward(transformer, inputs, layers, record), seen


@torch.no_grad()
def torch_forced(transformer: nn.Module, inputs: dict[str, torch.Tensor],
                 forced: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """PyTorch with every quantized tensor replaced by onnxruntime's value (teacher forcing).

    Each layer then sees the codes the graph computed upstream, so a difference left is the
    layer's own (one op's rounding, or a semantic mismatch), not a cascade: in a deep model
    with random weights one flipped code upstream grows into many downstream. Returns the
    output and each layer's own fake-quantized input (before it is replaced).
    """
    seen: dict[str, np.ndarray] = {}

    def force(name, mod, args, out):
        seen.setdefault(name, out.float().cpu().numpy())
        value = torch.from_numpy(forced[name]).to(out.dtype).reshape(out.shape)
        if getattr(mod, "write_back", False):
            args[0].copy_(value)  # every later reader of the tensor reads the graph's value
        return value
    return _hooked_forward(transformer, inputs, forced, force), seen


def code_flips(got: dict[str, np.ndarray], want: dict[str, np.ndarray],
               acts: dict[str, ActSpec]) -> dict[str, dict]:
    """Per layer: how many INT8 codes of its input differ, and by how many steps at most."""
    out = {}
    for n, spec in acts.items():
        steps = np.rint(np.abs(got[n] - want[n]) / spec.scale)
        out[n] = {"flips": int((steps > 0).sum()), "codes": int(steps.size),
                  "max_steps": int(steps.max(initial=0))}
    return out


def onnx_weight_codes(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """``<layer>.weight_quantized`` initializers as int arrays (INT4 unpacked)."""
    suffix = ".weight_quantized"
    return {t.name[: -len(suffix)]: numpy_helper.to_array(t).astype(np.int32)
            for t in model.graph.initializer if t.name.endswith(suffix)}


def count_code_mismatches(model: onnx.ModelProto, transformer: nn.Module) -> tuple[int, int]:
    """(mismatching, total) weight codes: ONNX vs integer_codes of the trained weights."""
    stored = onnx_weight_codes(model)
    bad = total = 0
    for name, layer in quant_layers(transformer):
        want = trained_codes(name, layer)
        if want is None:
            continue
        got = stored.get(name)
        total += want.size
        bad += want.size if got is None or got.shape != want.shape else int((got != want).sum())
    return bad, total


def qdq_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Number of activation QuantizeLinear and of weight / activation DequantizeLinear nodes."""
    inits = {t.name for t in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    return {"quantize": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
            "dequantize_weight": sum(n.input[0] in inits for n in dq),
            "dequantize_activation": sum(n.input[0] not in inits for n in dq)}


def _errors(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    diff = np.abs(got.astype(np.float64) - want)
    return float(diff.max()), float(np.linalg.norm(diff)) / max(float(np.linalg.norm(want)), 1e-12)


def _flip_summary(flips: dict[str, dict]) -> dict:
    worst = max(flips, key=lambda n: flips[n]["flips"] / flips[n]["codes"], default=None)
    return {"flipped_codes": sum(v["flips"] for v in flips.values()),
            "codes": sum(v["codes"] for v in flips.values()),
            "max_step_difference": max((v["max_steps"] for v in flips.values()), default=0),
            "worst_layer": worst,
            "worst_layer_flip_fraction": (flips[worst]["flips"] / flips[worst]["codes"]
                                          if worst else 0.0)}


def verify(result: ExportResult, transformer: nn.Module, inputs: dict[str, torch.Tensor],
           tol: Tolerance = Tolerance()) -> dict:
    """Run the export in onnxruntime against PyTorch; the report, with ``failures`` listed.

    Two comparisons: end to end (both run freely; ``output``, ``activations``) and layer-local
    (PyTorch fed the graph's quantized tensors, :func:`torch_forced`; ``layer_local``).
    """
    layers = list(result.acts)
    got, got_acts = run_probed(result, inputs, layers)
    want, want_acts = torch_probed(transformer, inputs, layers)
    forced_out, forced_acts = torch_forced(transformer, inputs, got_acts)
    max_abs, rel_l2 = _errors(got, want)
    local_abs, local_rel = _errors(got, forced_out)
    max_step = max((a.scale for a in result.acts.values()), default=0.0)
    output = {"max_abs_error": max_abs, "rel_l2_error": rel_l2,
              "max_abs_tolerance": tol.abs_steps * max_step, "rel_l2_tolerance": tol.rel_l2,
              "output_abs_max": float(np.abs(want).max()), "largest_activation_step": max_step,
              "gated": tol.end_to_end}
    local_flips = code_flips(got_acts, forced_acts, result.acts)
    bad_codes, n_codes = count_code_mismatches(result.model, transformer)
    report = {"output": output,
              "activations": _flip_summary(code_flips(got_acts, want_acts, result.acts)),
              "layer_local": {"output_max_abs_error": local_abs, "output_rel_l2_error": local_rel,
                              **_flip_summary(local_flips)},
              "weights": {"code_mismatches": bad_codes, "codes": n_codes},
              "qdq_nodes": qdq_counts(result.model),
              "num_quantized_layers": len(dict(quant_layers(transformer))),
              "num_weight_quantized": len(result.weights),
              "num_activation_quantized": len(result.acts),
              "num_activation_tensors": len(result.lowered.dequantized),
              "per_tensor_semantics": per_tensor_semantics(result, transformer, inputs, got,
                                                           got_acts, forced_acts, rel_l2, tol)}
    report["failures"] = _failures(report, local_flips, tol)
    return report


def per_tensor_semantics(result: ExportResult, transformer: nn.Module,
                         inputs: dict[str, torch.Tensor], got: np.ndarray,
                         got_acts: dict[str, np.ndarray], forced_acts: dict[str, np.ndarray],
                         rel_l2: float, tol: Tolerance) -> dict:
    """The gate: the graph read per tensor (as HTP/AIMET do) vs the trained PyTorch model.

    Gated per quantized tensor, layer-local: the relative L2 between the graph's value and
    PyTorch's, PyTorch fed the graph's upstream tensors (:func:`torch_forced`), worst tensor;
    a cascade-free reading (the forced model's output only shows the last layer). The
    end-to-end error is reported beside it; ``layer_input_rel_l2_error`` is the end-to-end
    error if PyTorch quantized only the layers' views (write-backs off): the effect guarded.
    """
    readers = result.lowered.float_readers
    with layer_input_semantics(transformer):
        views = torch_forward(transformer, inputs) if readers else got
    local = {n: _errors(got_acts[n], forced_acts[n])[1] for n in got_acts}
    worst = max(local, key=lambda n: local[n], default=None)
    return {"tensors_also_read_by_float_ops": sorted(readers),
            "rel_l2_error": local[worst] if worst else 0.0, "worst_layer": worst,
            "rel_l2_tolerance": tol.per_tensor_rel_l2, "end_to_end_rel_l2_error": rel_l2,
            "layer_input_rel_l2_error": _errors(got, views)[1]}


def _failures(report: dict, local_flips: dict[str, dict], tol: Tolerance) -> list[str]:
    out, local, fails = report["output"], report["layer_local"], []
    if tol.end_to_end and not out["max_abs_error"] <= out["max_abs_tolerance"]:
        fails.append(f"output max abs error {out['max_abs_error']:.3g} > "
                     f"{out['max_abs_tolerance']:.3g}")
    if tol.end_to_end and not out["rel_l2_error"] <= out["rel_l2_tolerance"]:
        fails.append(f"output relative L2 error {out['rel_l2_error']:.3g} > {tol.rel_l2:g}")
    if not local["output_max_abs_error"] <= out["max_abs_tolerance"]:
        fails.append(f"layer-local output max abs error {local['output_max_abs_error']:.3g} > "
                     f"{out['max_abs_tolerance']:.3g}")
    sem = report["per_tensor_semantics"]
    if not sem["rel_l2_error"] <= sem["rel_l2_tolerance"]:
        fails.append(f"per-tensor semantics: {sem['worst_layer']}'s input tensor differs from "
                     f"PyTorch's by {sem['rel_l2_error']:.3g} relative L2 (layer-local) > "
                     f"{sem['rel_l2_tolerance']:g}")
    for name, v in local_flips.items():
        if v["flips"] > max(tol.max_flip_fraction * v["codes"], tol.min_flips):
            fails.append(f"{v['flips']}/{v['codes']} activation codes of {name} differ")
    if report["weights"]["code_mismatches"]:
        fails.append(f"{report['weights']['code_mismatches']} weight codes differ from the "
                     "trained ones")
    q = report["qdq_nodes"]
    want = (report["num_weight_quantized"], report["num_activation_tensors"])
    if (q["dequantize_weight"], q["quantize"]) != want:
        fails.append(f"QDQ nodes {q} do not match {want[0]} quantized weights / {want[1]} "
                     "quantized activation tensors")
    return fails


def size_report(transformer: nn.Module, weights: dict[str, WeightSpec]) -> dict[str, int]:
    """FP32 bytes of the transformer vs the same with quantized weights packed at their bits.

    Packed = codes at ``bits`` bits each (two 4-bit codes per byte) + one FP32 scale per
    group (+ packed zero points when asymmetric); everything else (biases, norms, tables)
    stays FP32. Activation quantizer state (one scale per tensor) is left out of both.
    """
    params = {k: p for k, p in transformer.named_parameters() if ".input_quantizer." not in k}
    fp32 = 4 * sum(p.numel() for p in params.values())
    w_fp32 = w_packed = 0
    for spec in weights.values():
        w_fp32 += 4 * spec.codes.size
        w_packed += math.ceil(spec.codes.size * spec.bits / 8) + 4 * spec.scale.size
        if not spec.symmetric:
            w_packed += math.ceil(spec.zero_point.size * spec.bits / 8)
    return {"fp32_bytes": fp32, "packed_bytes": fp32 - w_fp32 + w_packed,
            "quantized_weight_fp32_bytes": w_fp32, "quantized_weight_packed_bytes": w_packed}
