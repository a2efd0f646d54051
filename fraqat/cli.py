"""The ``fraqat`` command: one sub-command per pipeline stage, all reading ``params.yaml``.

Thin on purpose: parse arguments, validate params, call ``fraqat.stages.<stage>.run``. User
errors (:class:`fraqat.errors.FraqatError`) print one line and exit non-zero.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from pathlib import Path

import typer

from fraqat.errors import FraqatError
from fraqat.methods import NAMES, RUN_NAMES

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="FraQAT: progressive fractional-bit QAT for diffusion transformers.")
ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="Path to params.yaml.")
SeedOpt = typer.Option(None, min=0, help="one seed (default: every seed of params.yaml's "
                       "seeds, in parallel workers: FRAQAT_JOBS, default one per core)")
log = logging.getLogger("fraqat")


def _run_stage(stage: str, params_path: Path, **kwargs) -> None:
    from fraqat.params import load_params

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        params = load_params(params_path)
        from fraqat.backends import backend_of

        backend_of(params).check_inputs(params)  # a real model's folder and prompts, up front
        _check_jobs_env()
        module = importlib.import_module(f"fraqat.stages.{stage}")
        from fraqat.train import launch

        if getattr(module, "DISTRIBUTED", False) and params.train.processes > 1 \
                and not launch.launched():
            raise typer.Exit(launch.relaunch(params.train.processes, sys.argv[1:]))
        from fraqat.threads import pin_threads

        pin_threads()  # numbers independent of the machine's core count
        start = time.perf_counter()
        module.run(params, **kwargs)
        log.info("stage %s done in %.1f s", stage, time.perf_counter() - start)
    except FraqatError as exc:
        typer.echo(f"fraqat {stage}: {exc}" if not str(exc).startswith("params.yaml")
                   else str(exc), err=True)
        raise typer.Exit(exc.exit_code) from None


def _check_jobs_env() -> None:
    """``FRAQAT_JOBS`` (worker processes per stage) must be a whole number >= 1 or unset."""
    import os

    from fraqat.jobs import JOBS_ENV

    wanted = os.environ.get(JOBS_ENV, "").strip()
    if wanted and not (wanted.isdigit() and int(wanted) >= 1):
        raise FraqatError(f"{JOBS_ENV}={wanted!r}: expected a whole number of worker processes "
                          ">= 1 (or unset: one per core)")


def _check_method(method: str, allowed: tuple[str, ...]) -> str:
    if method not in allowed:
        typer.echo(f"--method {method!r} is not allowed (allowed: {', '.join(allowed)})",
                   err=True)
        raise typer.Exit(2)
    return method


@app.command()
def validate(params: Path = ParamsOpt) -> None:
    """Validate params.yaml and exit (0 if valid, 2 with one line if not)."""
    from fraqat.params import load_params

    try:
        load_params(params)
    except FraqatError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(exc.exit_code) from None
    typer.echo(f"{params}: ok")


@app.command()
def prepare(params: Path = ParamsOpt) -> None:
    """Real images (+ prompts) that ship inside an installed package, split train/held-out."""
    _run_stage("prepare", params)


@app.command()
def pretrain(params: Path = ParamsOpt) -> None:
    """Train the embedded default's FP teacher (stands in for downloading a checkpoint)."""
    _run_stage("pretrain", params)


@app.command()
def calibrate(params: Path = ParamsOpt) -> None:
    """Write the calibration set: prompts, seeded noisy latents and timesteps."""
    _run_stage("calibrate", params)


@app.command()
def teacher(params: Path = ParamsOpt) -> None:
    """Cache the FP teacher's predictions on the calibration set."""
    _run_stage("teacher", params)


@app.command()
def train(method: str = typer.Option(..., help=" | ".join(RUN_NAMES)),
          seed: int | None = SeedOpt, params: Path = ParamsOpt) -> None:
    """Quantization-aware training of one (method, seed) run, or of every seed, resumable."""
    _run_stage("train", params, method=_check_method(method, RUN_NAMES), seed=seed)


@app.command()
def tune(params: Path = ParamsOpt) -> None:
    """Choose each method's learning rate on the validation split (reports/tune.json)."""
    _run_stage("tune", params)


@app.command()
def classifier(params: Path = ParamsOpt) -> None:
    """Train the evaluation classifier / feature network on the real training images."""
    _run_stage("classifier", params)


@app.command()
def evaluate(method: str = typer.Option(..., help=" | ".join(NAMES)),
             seed: int | None = SeedOpt, params: Path = ParamsOpt) -> None:
    """Sample fixed prompts/noise and score FID, prompt accuracy and teacher fidelity."""
    _run_stage("evaluate", params, method=_check_method(method, NAMES), seed=seed)


@app.command()
def report(params: Path = ParamsOpt) -> None:
    """Write reports/comparison.{md,csv}, metrics.json and the plots."""
    _run_stage("report", params)


@app.command()
def convert(params: Path = ParamsOpt) -> None:
    """Convert the exported run to a real W4A8 model: packed INT4 codes + scales + INT8 acts."""
    _run_stage("convert", params)


@app.command()
def export(params: Path = ParamsOpt) -> None:
    """Export the W4A8 model for Qualcomm HTP: ONNX QDQ + AIMET encodings, verified."""
    _run_stage("export", params)


SetOpt = typer.Option(None, "--set", help="KEY=VALUE overrides (more may follow the first)")


@app.command(context_settings={"allow_extra_args": True})
def plan(ctx: typer.Context,
         profile: str = typer.Option(None, help="a profile of profiles/ (e.g. paper-sana-600m)"),
         set_: list[str] = SetOpt,
         gpus: str = typer.Option(None, help="plan for NxGIB GPUs (e.g. 8x80), not this one"),
         disk_gb: float = typer.Option(None, help="free disk in GB (default: measured here)"),
         check_files: bool = typer.Option(True, help="check every input path and file"),
         params: Path = ParamsOpt) -> None:
    """Preflight: check the inputs, print GPU memory, disk and hours per stage; refuse (exit 2,
    one line) a run that cannot fit, saying what to change."""
    set_ = [*(set_ or []), *ctx.args]  # `--set a=1 b=2`, as the flow takes them
    from fraqat import plan as planning
    from fraqat.params import load_params
    from fraqat.profiles import requested

    try:
        values = requested(profile=profile, set_items=set_ or [], root=params.resolve().parent)
        p = load_params(params, overrides=values)
        if p.model not in planning.needs.SPECS:  # the embedded default: minutes on a CPU
            typer.echo(f"fraqat plan: model {p.model} trains in-project on the CPU; nothing "
                       "to plan (plans are for the paper's models)")
            return
        origin = planning.provenance(profile)
        found = planning.check_inputs(p, origin["required"]) if check_files else []
        from fraqat.models.folder import read_prompts

        prompts = len(read_prompts(p.prompts_path)) if check_files else 1000
        result = planning.plan(p, planning.machine(params.resolve().parent, gpus, disk_gb),
                               prompts)
    except FraqatError as exc:
        typer.echo(f"fraqat plan: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    typer.echo(planning.render(result, profile or str(params), found, origin["values"]))
    if not result.fits:
        typer.echo(f"fraqat plan: {result.refusal}", err=True)
        raise typer.Exit(2)


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="fraqat")


if __name__ == "__main__":  # pragma: no cover
    main()
