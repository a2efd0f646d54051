"""The converted W4A8 Sana-600M transformer at inference: memory and latency vs bf16 and torchao.

    python -m benchmarks.converted_inference --json out.json [--granularity tensor] [--tiny]

Builds diffusers' SanaTransformer2DModel at the Sana-600M config (random init, no download),
then, all in one process and all on the GPU at once:

* ``bf16``: the model cast to bf16, as the pipeline runs it;
* ``fraqat-w4a8``: fraqat's fake-quant model (INT4 weights, INT8 activations calibrated on one
  batch), converted (:func:`fraqat.quant.packed.convert_model`), saved, and loaded back with
  ``fraqat.load_converted``: packed INT4 codes that dequantize on the fly under bf16 autocast;
* ``torchao-int4wo`` / ``torchao-int8da``: torchao's ``Int4WeightOnlyConfig`` (group 128) and
  ``Int8DynamicActivationInt8WeightConfig`` on the bf16 model, where torchao imports (they
  quantize ``nn.Linear`` only; Sana's 1x1 / depthwise convs stay bf16).

Each is timed eager and replayed from a CUDA graph (``--compile`` models also compiled by
``torch.compile``, launched as is and replayed from a graph, with the first call's seconds),
on one call of the 1024 px pipeline's
transformer (:data:`benchmarks.configs.SANA_600M_CALL`: batch 2 for guidance), interleaved in
rotated rounds (CUDA events, median and per-round spread). Memory: the model's resident bytes
on the GPU and the peak of one call over it; disk: the files ``save_pretrained`` /
``save_converted`` write. Also the converted model's output against the fake-quant model's.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.configs import SANA_600M, SANA_600M_CALL
from benchmarks.timing import first_line, interleaved, meta, positive, spread, sync, time_ms
from benchmarks.timing import write_json as write_result
from fraqat.quant.converted import load_converted, save_converted, stored_bytes
from fraqat.quant.layers import QuantConfig, calibrate_activations, quantize_model
from fraqat.quant.packed import convert_model
from fraqat.quant.tensor_quantizers import share_tensor_quantizers

GIB = 2**30
SANA_TINY = dict(SANA_600M, attention_head_dim=8, num_attention_heads=4, num_layers=2,
                 cross_attention_dim=32, cross_attention_head_dim=8,
                 num_cross_attention_heads=4, caption_channels=64, sample_size=8)
TINY_CALL = dict(batch=2, latent=(32, 8, 8), tokens=8, timestep=500.0)


def call_inputs(cfg: dict, call: dict, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b = call["batch"]
    return {"hidden_states": torch.randn(b, *call["latent"], generator=g).to(device),
            "encoder_hidden_states": torch.randn(b, call["tokens"], cfg["caption_channels"],
                                                 generator=g).to(device),
            "timestep": torch.full((b,), call["timestep"], device=device),
            "encoder_attention_mask": torch.ones(b, call["tokens"], device=device)}


def forward(model: nn.Module, inputs: dict, fp32: bool) -> Callable[[], torch.Tensor]:
    """One no-grad transformer call: bf16 autocast on CUDA for the fp32-stored fake-quant and
    converted models (``fp32``), inputs in bf16 for the bf16 ones (as the pipeline passes)."""
    dev = inputs["hidden_states"].device.type
    if not fp32:
        inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                  for k, v in inputs.items()}

    def fn() -> torch.Tensor:
        with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16,
                                             enabled=fp32 and dev == "cuda", cache_enabled=False):
            return model(**inputs, return_dict=False)[0]
    return fn


def graphed(fn: Callable[[], torch.Tensor]) -> Callable[[], object]:
    """``fn`` captured once in a CUDA graph; the returned callable replays it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def first_call(fn: Callable[[], torch.Tensor], into: dict) -> Callable[[], torch.Tensor]:
    """``fn`` after one call, whose wall time (a compiled model's compile) goes in ``into``."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    into["first_call_s"] = time.perf_counter() - start
    print(f"first call (compile) {into['first_call_s']:.1f} s", flush=True)
    return fn


def resident(build: Callable[[], nn.Module], device: str) -> tuple[nn.Module, float]:
    """Build a model on ``device``; its resident GiB there (allocation delta)."""
    sync()
    before = torch.cuda.memory_allocated() if device == "cuda" else 0
    model = build()
    sync()
    return model, ((torch.cuda.memory_allocated() - before) / GIB if device == "cuda" else 0.0)


def call_peak(fn: Callable[[], object], device: str) -> float:
    """GiB a call allocates on top of what is resident (activations, dequantized weights)."""
    if device != "cuda":
        return 0.0
    sync()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    sync()
    return (torch.cuda.max_memory_allocated() - before) / GIB


def converted(base: nn.Module, inputs: dict, args, folder: Path) -> tuple[nn.Module, dict]:
    """fraqat W4A8 of ``base`` (calibrated on ``inputs``), converted, saved, loaded back;
    the loaded model's resident GiB and its output against the fake-quant model's."""
    fq = quantize_model(copy.deepcopy(base).to(args.device), QuantConfig(
        weight_bits=4.0, act_bits=8.0, granularity=args.granularity))
    one = {k: v[:1] for k, v in inputs.items()}
    share_tensor_quantizers(fq, one)
    calibrate_activations(fq, [0], lambda m, _: forward(m, inputs, True)())
    want = forward(fq, inputs, True)().float()
    specs = convert_model(fq.cpu())
    save_converted(folder, fq, specs, {"granularity": args.granularity})
    del fq
    model, mem = resident(lambda: load_converted(folder, device=args.device), args.device)
    got = forward(model, inputs, True)().float()
    info = {"resident_gib": mem, "disk_bytes": stored_bytes(folder), "layers": len(specs),
            "rel_l2_vs_fake_quant": float((got - want).norm() / want.norm()),
            "max_abs_vs_fake_quant": float((got - want).abs().max())}
    return model, info


def quantized_variants(fp32_base: nn.Module, source: nn.Module, inputs: dict, args,
                       folder: Path, res: dict) -> dict[str, tuple[nn.Module, bool, dict]]:
    """``{name: (model, runs under autocast, info)}``: fraqat's converted W4A8 of the fp32
    model and each of ``args.torchao``'s configs of ``source``; one that fails is a skipped
    row of ``res`` (the others are still measured)."""
    out: dict[str, tuple[nn.Module, bool, dict]] = {}
    try:
        conv, info = converted(fp32_base, inputs, args, folder)
        out["fraqat-w4a8"] = (conv, True, info)
    except Exception as err:
        traceback.print_exc()
        res["rows"].append({"model": "fraqat-w4a8", "skipped": first_line(err)})
    for kind in filter(None, args.torchao.split(",")):
        try:
            import torchao

            res["torchao"] = torchao.__version__
            (model, fmt), mem = resident(lambda k=kind: torchao_model(source, k, args.device),
                                         args.device)
            out[f"torchao-{kind}"] = (model, False, {"resident_gib": mem, "format": fmt})
        except Exception as err:
            traceback.print_exc()
            res["rows"].append({"model": f"torchao-{kind}", "skipped": first_line(err)})
    return out


def torchao_model(base: nn.Module, kind: str, device: str) -> tuple[nn.Module, str]:
    from torchao.quantization import (
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        quantize_,
    )
    tries: list[tuple[str, Callable[[], object]]] = (
        [("plain", lambda: Int4WeightOnlyConfig(group_size=128)),
         ("tile_packed_to_4d", lambda: Int4WeightOnlyConfig(
             group_size=128, int4_packing_format="tile_packed_to_4d"))] if kind == "int4wo"
        else [("per-row", lambda: Int8DynamicActivationInt8WeightConfig())])
    errors = []
    for name, config in tries:
        model = copy.deepcopy(base).to(device, torch.bfloat16)
        try:
            quantize_(model, config())
            return model, name
        except Exception as err:  # the next packing format, if any
            errors.append(f"{name}: {first_line(err)}")
            del model
    raise RuntimeError("; ".join(errors))


def table(res: dict) -> str:
    m = res["meta"]
    lines = [f"{m['device']} | torch {m['torch']} | diffusers {m['diffusers']} | torchao "
             f"{res.get('torchao', 'missing')} | {m['date']}", res["label"],
             f"{'model':16}{'mode':14}{'ms/call':>9}{'spread':>17}{'x bf16':>8}"
             f"{'resident GiB':>13}{'x bf16':>8}{'call peak GiB':>14}{'disk MiB':>10}"]
    nan = float("nan")
    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"{r['model']:16}{r.get('mode', ''):14}skipped: {r['skipped']}")
            continue
        lo_hi = f"[{r['lo']:.2f}-{r['hi']:.2f}]"
        lines.append(f"{r['model']:16}{r['mode']:14}{r['median']:9.2f}{lo_hi:>17}"
                     f"{r.get('x_bf16', nan):8.2f}{r['resident_gib']:13.3f}"
                     f"{r.get('x_bf16_mem', nan):8.2f}{r['call_peak_gib']:14.2f}"
                     f"{r.get('disk_bytes', 0) / 2**20:10.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--granularity", choices=["tensor", "channel", "group"], default="tensor")
    p.add_argument("--rounds", type=positive, default=6)
    p.add_argument("--reps", type=positive, default=10, help="timed calls per model per round")
    p.add_argument("--torchao", default="int4wo,int8da", help="torchao configs ('' for none)")
    p.add_argument("--compile", default="bf16,fraqat-w4a8",
                   help="models also timed under torch.compile (and, on CUDA, its graph)")
    p.add_argument("--json", type=Path)
    p.add_argument("--tiny", action="store_true", help="tiny sizes on any device")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        p.error("no CUDA device (allowed without one: --tiny)")
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device == "cuda"
    from diffusers import SanaTransformer2DModel

    cfg, call = (SANA_TINY, TINY_CALL) if args.tiny else (SANA_600M, SANA_600M_CALL)
    torch.manual_seed(0)
    base = SanaTransformer2DModel(**cfg).eval()
    inputs = call_inputs(cfg, call, args.device)
    res: dict = {"meta": meta(), "config": "tiny" if args.tiny else "sana-600m",
                 "granularity": args.granularity, "call": call, "rows": [],
                 "label": f"Sana-{'tiny' if args.tiny else '600M'} transformer, one call of "
                          f"the 1024 px pipeline: batch {call['batch']}, latents "
                          f"{'x'.join(map(str, call['latent']))}, {call['tokens']} tokens"}
    models: dict[str, tuple[nn.Module, bool, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bf16, mem = resident(lambda: copy.deepcopy(base).to(args.device, torch.bfloat16),
                             args.device)
        bf16.save_pretrained(Path(tmp) / "bf16")
        models["bf16"] = (bf16, False, {"resident_gib": mem,
                                        "disk_bytes": stored_bytes(Path(tmp) / "bf16")})
        models.update(quantized_variants(base, base, inputs, args, Path(tmp) / "w4a8", res))
        fns: dict[str, Callable[[], object]] = {}
        rows: dict[str, dict] = {}
        compiled = set(filter(None, args.compile.split(",")))
        for name, (model, autocast, info) in models.items():
            fn = forward(model, inputs, autocast)
            peak = call_peak(fn, args.device)
            Make = Callable[[], Callable[[], object]]
            modes: list[tuple[str, Make]] = [("eager", lambda f=fn: f)]
            if cuda:
                modes.append(("graph", lambda f=fn: graphed(f)))
            extra: dict = {}
            if name in compiled:
                modes.append(("compile", lambda m=model, a=autocast, x=extra: first_call(
                    forward(torch.compile(m), inputs, a), x)))
                if cuda:
                    modes.append(("compile+graph", lambda n=name: graphed(fns[f"{n}:compile"])))
            for mode, make in modes:
                try:
                    timed = make()
                except Exception as err:
                    traceback.print_exc()
                    res["rows"].append({"model": name, "mode": mode, "skipped": first_line(err)})
                    continue
                fns[f"{name}:{mode}"] = timed
                rows[f"{name}:{mode}"] = {"model": name, "mode": mode, "call_peak_gib": peak,
                                          **info, **(extra if "compile" in mode else {})}
        times = interleaved(fns, args.rounds, args.reps, timer=time_ms)
    for key, row in rows.items():
        row.update(spread(times[key]))
        ref = rows.get(f"bf16:{row['mode']}")
        if ref:
            row["x_bf16"] = row["median"] / ref["median"]
            row["x_bf16_mem"] = row["resident_gib"] / ref["resident_gib"] if cuda else 0.0
    res["rows"] = list(rows.values()) + res["rows"]
    write_result(args.json, res)
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
