"""Export the Sana-600M transformer config as W4A8 ONNX QDQ + AIMET encodings, verify it, time it.

    nice -n 10 python -m benchmarks.export_sana --json benchmarks/results/export-sana-600m-cpu.json

The paper deploys Sana on a Snapdragon 8 Elite; its FP32 weights (2.4 GB) are past protobuf's
2 GB limit. This builds the Sana-600M config with random weights (seeded; no download),
quantizes it W4A8 (per-tensor INT4 weights, INT8 activations with one quantizer per tensor),
calibrates the activations on ``--calib-batches`` random batches, exports it with
:func:`fraqat.export.export_transformer`, verifies it against PyTorch with
:func:`fraqat.export.verify` (the per-tensor gate included), writes the QDQ graph and the
float graph + encodings hand-off (external data) and times both in onnxruntime on this
machine's CPU, a proxy for the phone: the phone runs INT8/INT4 kernels on the HTP, the CPU
provider mostly dequantizes and runs FP32. Reported per phase: wall time and peak host memory
(VmHWM, reset between phases through ``/proc/self/clear_refs``), file sizes, ORT latency
(median of ``--repeats`` runs after one warm-up) and the session's resident memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from benchmarks.configs import SANA_600M
from benchmarks.timing import positive
from fraqat import export as hx
from fraqat.export.files import feed, session
from fraqat.quant.layers import QuantConfig, calibrate_activations, quantize_model
from fraqat.quant.tensor_quantizers import share_tensor_quantizers

GIB = 2**30



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latent", type=positive, default=16,
                   help="latent height = width (Sana-600M at 512 px: 16; 1024 px: 32)")
    p.add_argument("--tokens", type=positive, default=64, help="caption tokens")
    p.add_argument("--layers", type=positive, default=SANA_600M["num_layers"],
                   help="transformer blocks (28: Sana-600M; fewer for a quick check)")
    p.add_argument("--calib-batches", type=positive, default=3)
    p.add_argument("--batch", type=positive, default=1, help="batch of calibration/check/timing")
    p.add_argument("--repeats", type=positive, default=3, help="timed ORT runs per graph")
    p.add_argument("--threads", type=positive, default=torch.get_num_threads())
    p.add_argument("--out-dir", type=Path, help="keep the ONNX files here (default: temporary)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def rss_peak_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def rss(field: str = "VmHWM") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def phase(results: dict, name: str, fn: Callable[[], object]):
    """Run ``fn``; record its wall seconds and the process's peak resident bytes during it."""
    gc.collect()
    rss_peak_reset()
    start_rss, start = rss("VmRSS"), time.perf_counter()
    out = fn()
    results["phases"][name] = {"seconds": time.perf_counter() - start, "peak_rss_bytes": rss(),
                               "start_rss_bytes": start_rss}
    print(f"{name:<22} {results['phases'][name]['seconds']:8.1f} s  "
          f"peak {rss() / GIB:6.2f} GiB", flush=True)
    return out


def batch(args: argparse.Namespace, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, s = args.batch, args.latent
    return {"hidden_states": torch.randn(n, SANA_600M["in_channels"], s, s, generator=g),
            "encoder_hidden_states": torch.randn(n, args.tokens, SANA_600M["caption_channels"],
                                                 generator=g),
            "timestep": torch.rand(n, generator=g) * 1000,
            "encoder_attention_mask": torch.ones(n, args.tokens, dtype=torch.long)}


def latency(sess: ort.InferenceSession, inputs: dict, repeats: int) -> dict:
    sess.run(None, feed(inputs))  # warm-up (allocations, prepacking)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feed(inputs))
        times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * statistics.median(times), "runs_ms": [1000 * t for t in times]}


def fp64_spread(model: torch.nn.Module, inputs: dict) -> float:
    """Relative L2 between the PyTorch model in FP32 and the same model in FP64 (converted in
    place; the model is spent afterwards): its own sensitivity to FP32 rounding, what two
    correct FP32 runtimes (PyTorch and onnxruntime, or the CPU and the HTP) may differ by end
    to end. (A one-ulp nudge of an input or of the residual stream changes nothing: the next
    quantizer absorbs it; PyTorch at 1 vs 2 threads gives identical outputs.)"""
    a = hx.torch_forward(model, inputs)
    model.double()
    b = hx.torch_forward(model, {k: v.double() if v.is_floating_point() else v
                                 for k, v in inputs.items()})
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def save_float(qdq: onnx.ModelProto, path: Path) -> list[Path]:
    """The float graph + encodings hand-off (FP32 weights: external data past 1 GiB)."""
    return hx.save_model(hx.strip_qdq(qdq), path)


def timed_session(path: Path, inputs: dict, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    sess = session(path, threads=args.threads)
    load = time.perf_counter() - start
    return {"load_s": load, **latency(sess, inputs, args.repeats)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from diffusers import SanaTransformer2DModel

    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="export_sana_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"config": f"Sana-600M (SanaTransformer2DModel, random init, seed 0), "
                           f"{args.layers} of 28 blocks",
                 "device": f"CPU: {platform.processor() or platform.machine()}, "
                           f"{args.threads} threads ({_cpu_name()})",
                 "onnxruntime": ort.__version__, "torch": torch.__version__,
                 "inputs": {"batch": args.batch, "latent": [32, args.latent, args.latent],
                            "caption_tokens": args.tokens}, "phases": {}}

    def build():
        model = SanaTransformer2DModel(**{**SANA_600M, "num_layers": args.layers}).eval()
        quantize_model(model, QuantConfig(weight_bits=4, act_bits=8))
        plan = share_tensor_quantizers(model, batch(args, 100))
        return model, plan
    model, plan = phase(res, "build + quantize", build)
    res["parameters"] = sum(p.numel() for n, p in model.named_parameters()
                            if ".input_quantizer." not in n)
    res["write_back_tensors"] = len(plan.write_back)
    calib = [batch(args, s) for s in range(args.calib_batches)]
    phase(res, "calibrate", partial(calibrate_activations, model, calib,
                                    lambda m, b: m(**b, return_dict=False)))
    result = phase(res, "export (trace + QDQ)",
                   partial(hx.export_transformer, model, batch(args, 200)))
    check = batch(args, 300)
    tol = hx.Tolerance(end_to_end=False)  # random deep weights: reported, see fp64_spread
    report = phase(res, "verify (ORT vs torch)", partial(hx.verify, result, model, check, tol))
    res["verify"] = {k: report[k] for k in ("output", "activations", "layer_local", "weights",
                                            "qdq_nodes", "per_tensor_semantics", "failures")}
    res["sizes"] = hx.size_report(model, result.weights)
    res["fp32_vs_fp64_rel_l2"] = phase(res, "FP64 reference", partial(fp64_spread, model, check))
    del model, calib
    qdq_files = phase(res, "save QDQ graph",
                      partial(hx.save_model, result.model, out_dir / "model.onnx"))
    (out_dir / "model.encodings").write_text(json.dumps(result.encodings))
    float_files = phase(res, "save float graph",
                        partial(save_float, result.model, out_dir / "model_float.onnx"))
    del result
    res["files"] = {p.name: p.stat().st_size for p in [*qdq_files, *float_files,
                                                        out_dir / "model.encodings"]}
    res["float_graph_external_data"] = len(float_files) == 2
    for name, path in (("w4a8_qdq", out_dir / "model.onnx"),
                       ("fp32", out_dir / "model_float.onnx")):
        res[f"ort_{name}"] = phase(res, f"ORT {name}",
                                   partial(timed_session, path, check, args))
    print_table(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _bytes(files: dict[str, int], prefix: str) -> int:
    return sum(size for name, size in files.items() if name.startswith(prefix))


def _ort(res: dict, name: str) -> str:
    return (f"{res[f'ort_{name}']['median_ms']:.0f} ms / "
            f"{res['phases'][f'ORT {name}']['peak_rss_bytes'] / GIB:.2f} GiB")


def _peak(res: dict) -> int:
    return max(p["peak_rss_bytes"] for p in res["phases"].values())


def print_table(res: dict) -> None:
    s, f, v = res["sizes"], res["files"], res["verify"]
    sem = v["per_tensor_semantics"]
    rows = [("parameters", f"{res['parameters'] / 1e6:.1f} M"),
            ("FP32 weights (size_report)", f"{s['fp32_bytes'] / GIB:.3f} GiB"),
            ("packed W4 (size_report)", f"{s['packed_bytes'] / GIB:.3f} GiB "
             f"({s['fp32_bytes'] / s['packed_bytes']:.2f}x smaller)"),
            ("model.onnx (W4A8 QDQ)", f"{_bytes(f, 'model.onnx') / GIB:.3f} GiB"),
            ("model_float.onnx + .data", f"{_bytes(f, 'model_float') / GIB:.3f} GiB"),
            ("end-to-end rel L2 / max abs", f"{v['output']['rel_l2_error']:.2e} / "
             f"{v['output']['max_abs_error']:.3g} (torch FP32 vs FP64: "
             f"{res['fp32_vs_fp64_rel_l2']:.2e})"),
            ("layer-local flips (worst layer)", f"{v['layer_local']['flipped_codes']} / "
             f"{v['layer_local']['codes']} ({v['layer_local']['worst_layer_flip_fraction']:.2e})"),
            ("per-tensor gate rel L2", f"{sem['rel_l2_error']:.2e} <= {sem['rel_l2_tolerance']}"
             f" (layer views would be {sem['layer_input_rel_l2_error']:.2e})"),
            ("weight code mismatches", str(v["weights"]["code_mismatches"])),
            ("failures", "; ".join(v["failures"]) or "none"),
            ("ORT FP32 latency / peak RSS", _ort(res, "fp32")),
            ("ORT W4A8 QDQ latency / peak RSS", _ort(res, "w4a8_qdq")),
            ("peak host memory", f"{_peak(res) / GIB:.2f} GiB")]
    print(f"\nSana-600M config export, {res['device']}")
    for k, val in rows:
        print(f"  {k:<30} {val}")


if __name__ == "__main__":
    main()
