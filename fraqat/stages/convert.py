"""Stage ``convert``: the fake-quant run ``export.method`` / ``seeds[0]`` as a real W4A8 model.

Writes ``data/converted/`` (:mod:`fraqat.quant.converted`: packed INT4 codes two per byte,
their fp32 scales as trained, INT8 activation scales / zero points; loads with
``fraqat.load_converted``) and ``reports/convert.json``: the bytes of the run against the
converted folder, the bits per quantized weight, and the converted model's largest output
difference to the fake-quant model on random inputs (0 on the CPU: the same arithmetic).
Only the deployed run is converted (the one ``export`` ships); every run evaluates identically
either way, so evaluation keeps reading the fake-quant runs.
"""

from __future__ import annotations

import logging

import torch

from fraqat import paths
from fraqat.io import read_json, write_json
from fraqat.models.registry import dummy_inputs
from fraqat.params import Params
from fraqat.quant.converted import WEIGHTS, load_converted, save_converted, stored_bytes
from fraqat.quant.packed import bits_per_weight, convert_model
from fraqat.train.runs import load_quantized_transformer

log = logging.getLogger(__name__)


@torch.no_grad()
def run(params: Params) -> None:
    method, seed = params.export.method, params.seeds[0]
    run_dir = paths.run_dir(method, seed)
    transformer = load_quantized_transformer(run_dir)
    inputs = dummy_inputs(transformer, batch=2, generator=torch.Generator().manual_seed(0))
    want = transformer(**inputs)[0]
    info = read_json(run_dir / "quant.json")
    specs = convert_model(transformer)
    save_converted(paths.CONVERTED, transformer, specs,
                   {"run": str(run_dir), "method": method, "seed": seed,
                    "weight_bits": info["config"]["weight_bits"],
                    "granularity": info["config"]["granularity"]})
    got = load_converted(paths.CONVERTED)(**inputs)[0]
    run_bytes, conv_bytes = stored_bytes(run_dir), stored_bytes(paths.CONVERTED)
    report = {"run": str(run_dir), "run_bytes": run_bytes, "converted_bytes": conv_bytes,
              "ratio": conv_bytes / run_bytes,
              "weights_file_bytes": (paths.CONVERTED / WEIGHTS).stat().st_size,
              "num_layers": len(specs),
              "containers": sorted({f"int{s['container']}" for s in specs.values()}),
              "bits_per_quantized_weight": bits_per_weight(specs),
              "max_abs_output_difference": float((got - want).abs().max())}
    write_json(paths.CONVERT_REPORT, report)
    log.info("convert: %d layers, %d -> %d bytes (%.2fx), %.2f bits per quantized weight, "
             "max |converted - fake-quant| %.3g -> %s", len(specs), run_bytes, conv_bytes,
             report["ratio"], report["bits_per_quantized_weight"],
             report["max_abs_output_difference"], paths.CONVERTED)
