"""The converted W4A8 Sana-600M inside the pipeline's own ``__call__``: latency and memory of a
whole 1024 px text-to-image call, beside bf16 and torchao, with the same pipeline around each.

    python -m benchmarks.pipeline_call --json out.json [--steps 20] [--rounds 3] [--tiny]

One random-weight ``SanaPipeline`` (:func:`benchmarks.pipeline_stages.build_pipeline`: the
Sana-600M transformer, Sana's DC-AE, a 2-layer Gemma-2-2B-wide text encoder) in bf16 on the
GPU; its transformer is swapped, call by call, for

* ``bf16``: the pipeline's own transformer;
* ``fraqat-w4a8``: fraqat's converted model (:func:`benchmarks.converted_inference.converted`:
  packed INT4 weights, INT8 activation scales), run under bf16 autocast (its scales are fp32);
* ``torchao-int4wo`` / ``torchao-int8da``: torchao's weight-only INT4 and dynamic INT8 configs.

Each variant is one ``pipe(prompt, height=1024, width=1024, num_inference_steps=N,
guidance_scale=4.5, output_type="pt")`` call (batch 2 through the transformer for guidance,
text encoding and the DC-AE decode included), timed wall-clock with the GPU synchronized,
interleaved in rotated rounds. Memory: the transformer's resident GiB and the peak a call
allocates on top of everything resident.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.configs import SANA_600M, SANA_600M_CALL
from benchmarks.converted_inference import call_inputs, call_peak, quantized_variants
from benchmarks.pipeline_stages import TINY_TRANSFORMER, build_pipeline
from benchmarks.timing import first_line, interleaved, meta, positive, spread, wall_ms
from benchmarks.timing import write_json as write_result

TINY_CALL = dict(batch=2, latent=(4, 4, 4), tokens=8, timestep=500.0)
PROMPT = "a photo of a red fox in fresh snow, golden hour"


def pipeline_call(pipe, transformer: nn.Module, fp32: bool, resolution: int,
                  steps: int) -> Callable[[], torch.Tensor]:
    """One text-to-image call with ``transformer`` swapped in (bf16 autocast when its
    parameters are fp32: the converted model's scales)."""
    dev = pipe.device.type

    def fn() -> torch.Tensor:
        original, pipe.transformer = pipe.transformer, transformer
        scope = torch.autocast(dev, dtype=torch.bfloat16, cache_enabled=False) if fp32 \
            else contextlib.nullcontext()
        try:
            with torch.no_grad(), scope:
                return pipe(PROMPT, height=resolution, width=resolution,
                            num_inference_steps=steps, guidance_scale=4.5, output_type="pt",
                            generator=torch.Generator(dev).manual_seed(0)).images
        finally:
            pipe.transformer = original
    return fn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=positive, default=20, help="sampler steps per call")
    p.add_argument("--rounds", type=positive, default=3)
    p.add_argument("--reps", type=positive, default=1, help="timed calls per variant per round")
    p.add_argument("--torchao", default="int4wo,int8da", help="torchao configs ('' for none)")
    p.add_argument("--json", type=Path)
    p.add_argument("--tiny", action="store_true", help="tiny sizes on any device")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        p.error("no CUDA device (allowed without one: --tiny)")
    args.device, args.granularity = ("cuda" if torch.cuda.is_available() else "cpu"), "tensor"
    resolution = 64 if args.tiny else 1024
    pipe = build_pipeline(args.tiny, torch.device(args.device)).to(torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    base = pipe.transformer
    cfg, call = (TINY_TRANSFORMER, TINY_CALL) if args.tiny else (SANA_600M, SANA_600M_CALL)
    inputs = call_inputs(cfg, call, args.device)
    res: dict = {"meta": meta(), "config": "tiny" if args.tiny else "sana-600m",
                 "resolution": resolution, "steps": args.steps, "prompt": PROMPT,
                 "label": f"SanaPipeline __call__ at {resolution} px, {args.steps} steps, "
                          "guidance 4.5 (batch 2 through the transformer), DC-AE decode",
                 "rows": []}
    variants: dict[str, tuple[nn.Module, bool, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants["bf16"] = (base, False, {"resident_gib": sum(
            t.numel() * t.element_size() for t in base.state_dict().values()) / 2**30})
        float_base = type(base)(**base.config).to(torch.float32)
        float_base.load_state_dict({k: v.float() for k, v in base.state_dict().items()})
        variants.update(quantized_variants(float_base.eval(), base, inputs, args,
                                           Path(tmp) / "w4a8", res))
        del float_base
        fns, rows = {}, {}
        for name, (model, fp32, info) in variants.items():
            fn = pipeline_call(pipe, model, fp32, resolution, args.steps)
            try:
                peak = call_peak(fn, args.device)
            except Exception as err:
                traceback.print_exc()
                res["rows"].append({"model": name, "skipped": first_line(err)})
                continue
            fns[name] = fn
            rows[name] = {"model": name, "call_peak_gib": peak, **info}
        times = interleaved(fns, args.rounds, args.reps, timer=wall_ms)
    for name, row in rows.items():
        row.update(spread(times[name]))
        if "bf16" in rows:
            row["x_bf16"] = row["median"] / rows["bf16"]["median"]
            row["x_bf16_mem"] = row["resident_gib"] / rows["bf16"]["resident_gib"]
    res["rows"] = list(rows.values()) + res["rows"]
    write_result(args.json, res)
    print(table(res))
    return 0


def table(res: dict) -> str:
    m = res["meta"]
    lines = [f"{m['device']} | torch {m['torch']} | diffusers {m['diffusers']} | torchao "
             f"{res.get('torchao', 'missing')} | {m['date']}", res["label"],
             f"{'transformer':16}{'s/call':>9}{'spread':>17}{'x bf16':>8}"
             f"{'resident GiB':>13}{'x bf16':>8}{'call peak GiB':>14}"]
    nan = float("nan")
    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"{r['model']:16}skipped: {r['skipped']}")
            continue
        lo_hi = f"[{r['lo'] / 1e3:.2f}-{r['hi'] / 1e3:.2f}]"
        lines.append(f"{r['model']:16}{r['median'] / 1e3:9.2f}{lo_hi:>17}"
                     f"{r.get('x_bf16', nan):8.2f}{r['resident_gib']:13.3f}"
                     f"{r.get('x_bf16_mem', nan):8.2f}{r['call_peak_gib']:14.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
