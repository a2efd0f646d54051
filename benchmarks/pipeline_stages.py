"""The Sana-600M pipeline through the pipeline's own stages: time, GPU memory and disk per stage.

Builds a ``SanaPipeline`` with random weights (no download): the Sana-600M transformer
(:data:`benchmarks.configs.SANA_600M`), the DC-AE of ``Sana_600M_1024px_diffusers``
(:data:`DC_AE_SANA`: 32 latent channels, 32x compression), a Gemma-2-2B-wide text encoder cut
to a few layers (width 2304 = ``caption_channels``; the width is what the transformer sees),
a word-level offline tokenizer and Sana's flow DPM-Solver; ``save_pretrained`` writes it to a
scratch folder. A scratch project's params (model ``sana-600m``, ``model_path`` that folder,
1024 px) then go through the stage functions ``fraqat <stage>`` calls, in order, in this
process: prepare, pretrain, calibrate, teacher, tune, train (each method), classifier,
evaluate (fp + each method), report. Before each stage the CUDA caching allocator is emptied
and its peak counters reset, so each row's peak (``max_memory_allocated`` / ``_reserved``) is
that stage's own; ``allocated at start`` is what earlier stages still held (the CUDA
context is in neither). Disk = the bytes of the files the stage created or changed under
``data/`` and ``reports/``.

    python -m benchmarks.pipeline_stages --json $OUT/        # one GPU: <dir>/...-h100.json
    python -m benchmarks.pipeline_stages --tiny --json /tmp/  # CPU, 32 px, under a minute

The JSON is rewritten after every stage (``complete: false`` until the end), so a run that
stops keeps the rows it finished.

The JSON also holds :func:`benchmarks.model_needs.project`'s estimate for the five models
(the README's table, ``python -m pipelines.tools.readme``). Random weights: this measures cost, not
quality.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.configs import DC_AE_SANA, SANA_600M
from benchmarks.timing import meta, write_json
from fraqat import paths, profiles

GIB = 2**30
ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("diffusers", "transformers", "tokenizers", "pydantic", "sklearn", "cleanfid.fid",
          "torchvision", "matplotlib", "PIL", "safetensors", "yaml", "pandas", "scipy")
# Gemma-2-2B's widths (hidden 2304, 8 heads of 256, 4 KV heads), 2 of its 26 layers
GEMMA2_CUT = dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                  max_position_embeddings=8192)
TINY_TRANSFORMER = dict(SANA_600M, num_layers=1, num_attention_heads=2, attention_head_dim=8,
                        cross_attention_dim=16, num_cross_attention_heads=2,
                        cross_attention_head_dim=8, caption_channels=16, in_channels=4,
                        out_channels=4, sample_size=16)
TINY_VAE = dict(DC_AE_SANA, latent_channels=4, attention_head_dim=2,
                encoder_block_types=("ResBlock", "EfficientViTBlock"),
                decoder_block_types=("ResBlock", "EfficientViTBlock"),
                encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
                encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1))
TINY_GEMMA = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                  max_position_embeddings=512)
# the run: (full on one GPU, tiny on the CPU)
RUN = {False: dict(resolution=1024, device="cuda", prompts=4, num_samples=64, probe=16,
                   validation=8, steps=40, batch=8, images=4, eval_steps=4),
       True: dict(resolution=32, device="cpu", prompts=3, num_samples=16, probe=8,
                  validation=4, steps=6, batch=4, images=2, eval_steps=2)}
METHODS = ("ptq", "qat", "fraqat")


def missing_modules() -> list[str]:
    """Modules the stages import that this interpreter lacks (checked before any work)."""
    out = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            out.append(f"{name} ({exc})")
    return out


def build_pipeline(tiny: bool, device: torch.device):
    """A random-weight ``SanaPipeline`` of the Sana-600M configuration (or a tiny one)."""
    from diffusers import (
        AutoencoderDC,
        DPMSolverMultistepScheduler,
        SanaPipeline,
        SanaTransformer2DModel,
    )
    from transformers import Gemma2Config, Gemma2Model

    from tests.tiny_pipelines import VOCAB, tokenizer

    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds instead of minutes
        transformer = SanaTransformer2DModel(**(TINY_TRANSFORMER if tiny else SANA_600M))
        vae = AutoencoderDC(**(TINY_VAE if tiny else DC_AE_SANA))
        text_encoder = Gemma2Model(Gemma2Config(vocab_size=VOCAB, pad_token_id=0,
                                                bos_token_id=2, eos_token_id=3,
                                                **(TINY_GEMMA if tiny else GEMMA2_CUT)))
    scheduler = DPMSolverMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True,
                                            prediction_type="flow_prediction")
    return SanaPipeline(tokenizer=tokenizer(300), text_encoder=text_encoder, vae=vae,
                        transformer=transformer, scheduler=scheduler)


def params_for(tiny: bool, model_path: Path, prompts_path: Path) -> dict:
    """The scratch project's params.yaml: profiles/pipeline-tiny.yaml resized."""
    r = RUN[tiny]
    raw = profiles.merged("pipeline-tiny")
    raw.update(model="sana-600m", model_path=str(model_path), prompts_path=str(prompts_path),
               resolution=r["resolution"], device=r["device"], methods=list(METHODS),
               seeds=[0])
    raw["calibration"].update(num_samples=r["num_samples"], validation_samples=r["validation"])
    raw["train"].update(steps=r["steps"], batch_size=r["batch"], checkpoint_every=10**6,
                        probe_every=r["steps"], probe_samples=r["probe"])
    raw["eval"].update(num_images=r["images"], steps=r["eval_steps"], batch_size=r["images"])
    return raw


def file_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for sub in ("data", "reports") for p in (root / sub).rglob("*") if p.is_file()}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measured(name: str, fn, device: torch.device, root: Path) -> dict:
    """Run ``fn()`` as one stage: wall time, its own peak GPU memory, the bytes it wrote."""
    cuda = device.type == "cuda"
    if cuda:  # free what earlier stages left, so the peak is this stage's own
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start_alloc = torch.cuda.memory_allocated() if cuda else 0
    before = file_state(root)
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    after = file_state(root)
    changed = [k for k, v in after.items() if before.get(k) != v]
    row = {"stage": name, "wall_s": round(wall, 2),
           "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
           "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else None,
           "start_allocated_gib": start_alloc / GIB if cuda else None,
           "output_bytes": sum(after[k][0] for k in changed), "output_files": len(changed)}
    logging.getLogger("benchmark").info("%s: %.1f s", name, wall)
    return row


def stage_calls(params) -> list[tuple[str, object]]:
    """(row name, call) for every stage in ``dvc.yaml``'s order, export left out."""
    def stage(name: str, **kw):
        return lambda: importlib.import_module(f"fraqat.stages.{name}").run(params, **kw)

    calls = [(n, stage(n)) for n in ("prepare", "pretrain", "calibrate", "teacher", "tune")]
    calls += [(f"train {m}", stage("train", method=m, seed=0)) for m in params.methods]
    calls.append(("classifier", stage("classifier")))
    calls += [(f"evaluate {m}", stage("evaluate", method=m, seed=0))
              for m in ("fp", *params.methods)]
    calls.append(("report", stage("report")))
    return calls


def run(tiny: bool, workdir: Path, progress=lambda rows: None) -> dict:
    """Build, save, run every stage; ``progress(rows)`` after each (a crash keeps the rows)."""
    from fraqat.models.folder import check_inputs, read_prompts
    from fraqat.params import parse_params

    device = torch.device("cpu" if tiny else "cuda")
    r, rows = RUN[tiny], []
    folder, project = workdir / "Sana_600M_random", workdir / "project"
    project.mkdir(parents=True)
    holder: dict = {}
    rows.append(measured("build (random init)",
                         lambda: holder.update(pipe=build_pipeline(tiny, device)), device,
                         project))
    counts = {name: sum(p.numel() for p in getattr(holder["pipe"], name).parameters())
              for name in ("transformer", "vae", "text_encoder")}
    rows.append(measured("save_pretrained", lambda: holder["pipe"].save_pretrained(folder),
                         device, project))
    rows[-1]["output_bytes"] = folder_bytes(folder)
    del holder["pipe"]  # the stages load the saved folder, as a user's run would
    prompts = workdir / "prompts.txt"
    prompts.write_text("\n".join(read_prompts(None)[: r["prompts"]]) + "\n")
    raw = params_for(tiny, folder, prompts)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    cwd = Path.cwd()
    os.chdir(project)
    try:
        check_inputs(params)
        for name, call in stage_calls(params):
            rows.append(measured(name, call, device, project))
            progress(rows)
    finally:
        os.chdir(cwd)
    train = [json.loads((project / paths.train_metrics(m, 0)).read_text())
             for m in params.methods]
    return {"meta": {**meta(), "transformers": __import__("transformers").__version__,
                     "tiny": tiny},
            "run": {**r, "methods": list(params.methods), "seeds": [0],
                    "latent": [int(x) for x in _latent(raw, tiny)],
                    "params": counts, "depth_width": _depth_width(tiny),
                    "checkpoint_bytes": folder_bytes(folder),
                    "transformer_bytes": folder_bytes(folder / "transformer"),
                    "train_wall_seconds": {t["method"]: t["wall_seconds"] for t in train},
                    "train_steps": {t["method"]: t["steps"] for t in train}},
            "stages": rows}


def _depth_width(tiny: bool) -> int:
    cfg = TINY_TRANSFORMER if tiny else SANA_600M
    return cfg["num_layers"] * cfg["num_attention_heads"] * cfg["attention_head_dim"]


def _latent(raw: dict, tiny: bool) -> tuple[int, int, int]:
    channels = (TINY_VAE if tiny else DC_AE_SANA)["latent_channels"]
    side = raw["resolution"] // 32 if not tiny else raw["resolution"] // 2
    return channels, side, side


def table(result: dict) -> str:
    """The per-stage table as markdown (printed, and the form RESULTS.md quotes)."""
    def gib(x):
        return "-" if x is None else f"{x:.2f}"
    lines = ["| stage | wall s | peak allocated GiB | peak reserved GiB | allocated at start GiB "
             "| output MiB |", "|---|---|---|---|---|---|"]
    for s in result["stages"]:
        lines.append(f"| {s['stage']} | {s['wall_s']:.1f} | {gib(s['peak_allocated_gib'])} "
                     f"| {gib(s['peak_reserved_gib'])} | {gib(s['start_allocated_gib'])} "
                     f"| {s['output_bytes'] / 2**20:.1f} |")
    lines.append(f"| total | {sum(s['wall_s'] for s in result['stages']):.1f} | | | | |")
    return "\n".join(lines)


def json_path(path: Path | None, device: str) -> Path | None:
    """``path``, or inside the folder ``path`` a name that says the card (h100, h200, cpu)."""
    if path is None or not path.is_dir():
        return path
    card = re.search(r"[A-Z]\d{2,3}[A-Z]?", device)
    return path / f"pipeline-stages-sana-600m-{card.group(0).lower() if card else 'cpu'}.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny config at 32 px on the CPU")
    ap.add_argument("--json", type=Path, default=None,
                    help="where to write the result (a folder: a file named after the card)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="scratch folder (default: a temporary one, removed at the end)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if missing := missing_modules():
        print(f"pipeline_stages: missing modules: {'; '.join(missing)}", file=sys.stderr)
        return 2
    if not args.tiny and not torch.cuda.is_available():
        print("pipeline_stages: no CUDA device (allowed: a GPU, or --tiny on the CPU)",
              file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        path = json_path(args.json, meta()["device"])
        result = run(args.tiny, workdir, lambda rows: write_json(path, {
            "meta": meta(), "complete": False, "stages": rows}))
    from benchmarks.model_needs import project

    result["needs"] = project(result)
    print(table(result))
    write_json(path, {**result, "complete": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
