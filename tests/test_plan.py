"""The paper profiles and the preflight: profiles validate, carry provenance for every value,
pass the input checks on tiny same-family folders, and a run that cannot fit (or lacks a path)
is refused in one line with exit code 2."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fraqat import needs, plan, profiles
from fraqat.cli import app
from fraqat.params import load_params
from tests.tiny_pipelines import MODEL_OF, save_tiny_clip

ROOT = Path(__file__).resolve().parents[1]
PAPER = [n for n in profiles.names() if n.startswith("paper-")]
FAMILY = {v: k for k, v in MODEL_OF.items()} | {"sana-1.6b": "sana"}
runner = CliRunner()


def test_one_paper_profile_per_paper_model():
    assert sorted(profiles.overrides(n)["model"] for n in PAPER) == sorted(needs.SPECS)


@pytest.mark.parametrize("name", PAPER)
def test_profile_validates_and_every_value_has_a_provenance(name):
    p = load_params(ROOT / "params.yaml", overrides=profiles.flat(profiles.overrides(name)))
    assert (p.bits, p.act_bits, p.quant.granularity) == (4, 8, "tensor")
    origin = plan.provenance(name)
    keys = set(profiles.flat(profiles.overrides(name)))
    assert keys == set(origin["values"]), keys ^ set(origin["values"])
    assert all(v.split(":")[0] in ("paper", "assumed") for v in origin["values"].values())
    assert origin["values"]["bits"].startswith("paper")
    assert set(origin["required"]) == {"model_path", "prompts_path", "eval.reference_path",
                                       "eval.inception_path", "eval.clip_path"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Prompts, reference images, an Inception archive stand-in and a tiny CLIP folder."""
    from PIL import Image

    root = tmp_path_factory.mktemp("inputs")
    (root / "prompts.txt").write_text("a red car\na small house\n")
    (root / "ref").mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (40 * i, 10, 200)).save(root / "ref" / f"{i}.png")
    with zipfile.ZipFile(root / "inception-2015-12-05.pt", "w") as z:
        z.writestr("archive/version", "3")  # only its being an archive is checked
    return {"prompts_path": str(root / "prompts.txt"),
            "eval.reference_path": str(root / "ref"),
            "eval.inception_path": str(root / "inception-2015-12-05.pt"),
            "eval.clip_path": str(save_tiny_clip(root / "clip"))}


def _plan(name: str, sets: dict[str, str], *extra: str):
    args = ["plan", "--profile", name, "--params", str(ROOT / "params.yaml"), "--disk-gb",
            "2000", *extra, "--set", *(f"{k}={v}" for k, v in sets.items())]
    return runner.invoke(app, args)


@pytest.mark.parametrize("name", PAPER)
def test_preflight_passes_its_checks_on_tiny_folders(name, inputs, tiny_pipeline_dir):
    model = profiles.overrides(name)["model"]
    sets = {**inputs, "model_path": str(tiny_pipeline_dir(FAMILY[model]))}
    if model == "flux-schnell":  # 177 GiB of fp32 weights, grads and AdamW: sharded
        sets.update({"train.parallel": "fsdp", "train.processes": "8"})
    res = _plan(name, sets, "--gpus", "8x141")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "reference images: 3" in out and "prompts: 2" in out and "CLIP: ok" in out
    assert "verdict  fits" in out and "as the paper states" in out
    for stage in ("calibrate", "teacher", "tune", "train", "evaluate"):
        assert f"  {stage} " in out


def test_refuses_a_machine_too_small_in_one_line(inputs, tiny_pipeline_dir):
    sets = {**inputs, "model_path": str(tiny_pipeline_dir("sana"))}
    res = _plan("paper-sana-1.6b", sets, "--gpus", "1x24")
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in res.output
    assert "Sana-1.6B training needs" in line and "train.processes=" in line and "fsdp" in line


def test_suggests_checkpointing_where_it_is_enough(inputs, tiny_pipeline_dir):
    sets = {**inputs, "model_path": str(tiny_pipeline_dir("sd3")),
            "train.gradient_checkpointing": "false"}
    res = _plan("paper-sd3.5-medium", sets, "--gpus", "1x80")
    assert res.exit_code == 2
    assert "change: --set train.gradient_checkpointing=true" in res.stderr


def test_refuses_a_missing_or_wrong_path_in_one_line(inputs, tiny_pipeline_dir, tmp_path):
    res = _plan("paper-sana-600m", {**inputs, "model_path": str(tmp_path / "nowhere")},
                "--gpus", "1x139")
    assert res.exit_code == 2 and "model_path" in res.stderr and "Traceback" not in res.output
    missing = {k: v for k, v in inputs.items() if k != "eval.clip_path"}
    res = _plan("paper-sana-600m", {**missing, "model_path": str(tiny_pipeline_dir("sana"))})
    assert res.exit_code == 2 and "not set: eval.clip_path" in res.stderr
    wrong = {**inputs, "model_path": str(tiny_pipeline_dir("pixart"))}  # another family
    res = _plan("paper-sana-600m", wrong, "--gpus", "1x139")
    assert res.exit_code == 2 and "PixArtSigmaPipeline" in res.stderr
    (tmp_path / "not-a-zip.pt").write_text("x")
    bad = {**inputs, "model_path": str(tiny_pipeline_dir("sana")),
           "eval.inception_path": str(tmp_path / "not-a-zip.pt")}
    res = _plan("paper-sana-600m", bad, "--gpus", "1x139")
    assert res.exit_code == 2 and "not-a-zip.pt" in res.stderr


def test_bad_machine_names_and_no_gpu(monkeypatch, tmp_path):
    with pytest.raises(plan.PlanError, match="expected NxGIB"):
        plan.parse_gpus("eight")
    assert plan.parse_gpus("8x80") == (8, 80.0)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    m = plan.machine(tmp_path)
    assert m.gpus == 0 and m.disk_free_gb > 0
    p = load_params(ROOT / "params.yaml", overrides=profiles.flat(
        profiles.overrides("paper-sana-600m")))
    result = plan.plan(p, m, prompts=100)
    assert not result.fits and "no CUDA GPU" in (result.refusal or "")


def test_processes_are_the_gpus_the_run_uses(tmp_path):
    p = load_params(ROOT / "params.yaml", overrides=profiles.flat(
        profiles.overrides("paper-flux-schnell")))
    eight = plan.Machine(8, 141.0, 2000.0, "8 x 141 GiB")
    refused = plan.plan(p, eight, prompts=100)  # one process: the whole state on one GPU
    assert not refused.fits and "train.processes=8" in (refused.refusal or "")
    sharded = p.model_copy(update={"train": p.train.model_copy(
        update={"processes": 8, "parallel": "fsdp"})})
    fits = plan.plan(sharded, eight, prompts=100)
    assert fits.fits and fits.layout.gpus == 8 and fits.layout.sharded
    two = plan.plan(sharded, plan.Machine(2, 141.0, 2000.0, "2 x 141 GiB"), prompts=100)
    assert not two.fits and "train.processes: 8 needs one GPU per process, 2 here" in (
        two.refusal or "")


def test_memory_rule_reproduces_the_measurement():
    """At the measured batches the rule gives the measured peaks back (per family)."""
    data = json.loads(sorted((ROOT / "benchmarks/results").glob("paper-profiles-*.json"))[-1]
                      .read_text())
    acts, ref = needs.activations(data), needs.load_reference()[0]
    for m in data["models"]:
        for row in m["rows"]:
            got = needs.train_bytes(m["model"], row["batch"], 1024, 1, False,
                                    row["checkpointing"], acts, ref) / needs.GIB
            assert got == pytest.approx(row["peak_gib"], rel=1e-6), (m["model"], row)
    fixed, per, source = needs.train_activation("flux-schnell", True, 1024, acts, ref)
    assert source == "scaled from SD3.5-Medium" and per > 0  # not measured: too large


@pytest.mark.slow
def test_flow_dry_run_is_the_plan_and_runs_nothing(capfd):
    from pipelines import flows

    before = (ROOT / "params.yaml").read_bytes()
    with pytest.raises(SystemExit) as exit_:
        flows.main(["--profile", "paper-sana-600m", "--dry-run", "--repo", str(ROOT),
                    "--set", "model_path=/nowhere"])
    assert exit_.value.code == 2
    err = capfd.readouterr().err
    assert "fraqat plan: not set: prompts_path" in err and "Traceback" not in err
    assert (ROOT / "params.yaml").read_bytes() == before


def test_the_embedded_default_has_nothing_to_plan():
    res = runner.invoke(app, ["plan", "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 0 and "nothing to plan" in res.stdout
