"""Bad files get one line: the checked loaders, then a table of corrupted inputs through the CLI.

Each CLI case corrupts one input of a finished tiny project, runs the stage that reads it and
asserts one line (the file, what is wrong, what to do), exit code 2, and that every finished
output is byte-for-byte as it was. ``tests/test_checked_e2e.py`` runs cases as a user would:
a real ``fraqat`` process, ``dvc repro`` and the Prefect flow.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from fraqat import paths
from fraqat.checked import (
    check_pipeline_folder,
    image_files,
    load_tensors,
    load_torch,
    read_json,
    read_text_lines,
)
from fraqat.cli import app
from fraqat.errors import BadFileError
from fraqat.io import save_tensors, write_json
from tests.tiny import TINY_PARAMS, make_tiny_repo

PIPELINE_PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "pipeline-tiny.yaml"


def cut(path: Path) -> None:
    """Keep the first half of ``path``: a copy or a download that stopped midway."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``data/`` and ``reports/`` with a hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for top in ("data", "reports") for p in sorted((root / top).rglob("*"))
            if p.is_file()}


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# --- the loaders -------------------------------------------------------------------------------

def test_a_truncated_json_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "model_index.json"
    path.write_text('{"_class_name": "SanaPipeline", "vae": ["diffus')
    with pytest.raises(BadFileError, match=r"model_index.json: not a readable JSON file "
                                           r"\(JSONDecodeError: .*; do this$"):
        read_json(path, todo="do this")
    path.write_text("[1, 2]")
    with pytest.raises(BadFileError, match="holds a JSON list, not an object"):
        read_json(path, todo="x")
    path.write_text('{"losses": {}}')
    with pytest.raises(BadFileError, match="has no 'chosen'"):
        read_json(path, ("chosen",), todo="x")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32"])
def test_prompts_decode_by_their_byte_order_mark(tmp_path, encoding):
    path = tmp_path / "prompts.txt"
    path.write_text("a red car\n\n  café at night \n", encoding=encoding)
    assert read_text_lines(path, "x") == ["a red car", "café at night"]


@pytest.mark.parametrize("data, problem", [
    (bytes(range(128, 256)) * 4, "not UTF-8 text (byte 0x80 at offset 0)"),
    ("a red car\n".encode("utf-16-le"), "holds NUL characters"),  # UTF-16 without a BOM
    (codecs.BOM_UTF16_LE + b"\x00\xd8", "not UTF-16 text"),  # a lone surrogate
])
def test_undecodable_prompts_are_one_line(tmp_path, data, problem):
    path = tmp_path / "prompts.txt"
    path.write_bytes(data)
    with pytest.raises(BadFileError) as err:
        read_text_lines(path, "save it as UTF-8")
    assert str(err.value).startswith(f"{path}: {problem}")
    assert str(err.value).endswith("; save it as UTF-8")


def test_a_sharded_cache_with_a_missing_shard_is_one_line(tmp_path):
    path = tmp_path / "cache.safetensors"
    save_tensors(path, {"v": torch.arange(60.0).reshape(30, 2)}, shard_bytes=100)
    assert torch.equal(load_tensors(path, ("v",))["v"], torch.arange(60.0).reshape(30, 2))
    (path / "shard-00001-of-00003.safetensors").unlink()
    with pytest.raises(BadFileError, match=r"cache.safetensors: shard "
                                           r"shard-00001-of-00003.safetensors missing"):
        load_tensors(path)
    save_tensors(path, {"v": torch.zeros(3)})
    with pytest.raises(BadFileError, match=r"has no 'probe_v' \(not the tensor file"):
        load_tensors(path, ("v", "probe_v"))


def test_a_checkpoint_cut_in_half_is_one_line(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 3, "weights": torch.randn(256)}, path)
    cut(path)
    with pytest.raises(BadFileError, match=r"checkpoint.pt: not a readable torch.save file "
                                           r"\(RuntimeError: .*; delete it$"):
        load_torch(path, "delete it")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_sharded_checkpoint_with_a_shard_cut_short_is_one_line(tmp_path):
    """DCP's own error derives from BaseException and wraps each rank's: still one line."""
    from fraqat.train import sharded_checkpoint

    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = sharded_checkpoint.save(tmp_path, {"step": 3, "fingerprint": "x"}, model, opt)
    (shard,) = path.glob("*.distcp")
    cut(shard)
    with pytest.raises(BadFileError) as err:
        sharded_checkpoint.load(path, model, opt)
    assert str(err.value) == (f"{path}: not a readable sharded checkpoint (EOFError); delete "
                              f"{path} to resume from an earlier checkpoint or step 0")


def test_an_empty_reference_folder_is_one_line(tmp_path):
    with pytest.raises(BadFileError, match=r"holds 0 image files \(needs >= 2 .png"):
        image_files(tmp_path, (".png",), "add images")
    with pytest.raises(BadFileError, match="missing"):
        image_files(tmp_path / "nowhere", (".png",), "add images")


# The diffusers folder cases: how to break a saved tiny Sana pipeline, what the line names.
FOLDER_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated-index": (lambda p: cut(p / "model_index.json"),
                        "model_index.json: not a readable JSON file (JSONDecodeError"),
    "no-vae": (lambda p: shutil.rmtree(p / "vae"), "vae: missing (model_index.json lists it)"),
    "truncated-weights": (lambda p: cut(p / "transformer/diffusion_pytorch_model.safetensors"),
                          "transformer/diffusion_pytorch_model.safetensors: not a readable "
                          "safetensors file (SafetensorError"),
    "no-config": (lambda p: (p / "vae/config.json").unlink(),
                  "vae/config.json: missing (model_index.json lists vae/ as a component)"),
    "no-weights": (lambda p: (p / "vae/diffusion_pytorch_model.safetensors").unlink(),
                   "vae: has no weights file"),
}


@pytest.mark.parametrize("case", sorted(FOLDER_CASES))
def test_a_broken_pipeline_folder_names_the_component(case, tiny_pipeline_dir, tmp_path):
    folder = shutil.copytree(tiny_pipeline_dir("sana"), tmp_path / "pipe")
    assert check_pipeline_folder(folder, "x")["_class_name"] == "SanaPipeline"
    breaks, says = FOLDER_CASES[case]
    breaks(folder)
    with pytest.raises(BadFileError) as err:
        check_pipeline_folder(folder, "restore it")
    assert str(err.value).startswith(f"{folder}/{says}") and "\n" not in str(err.value)


# --- through the CLI: a finished tiny project ---------------------------------------------------

@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    """A tiny repo (with its dvc.yaml) where prepare..teacher ran, plus a tuned-rate file and
    a saved run; the cases below corrupt one file each and put it back."""
    from fraqat.models.registry import load_teacher
    from fraqat.params import load_params
    from fraqat.quant.layers import QuantConfig
    from fraqat.stages import calibrate, prepare, pretrain, teacher
    from fraqat.train.runs import quantized_copy, save_run

    root = make_tiny_repo(tmp_path_factory.mktemp("checked") / "repo")
    raw = yaml.safe_load((root / "params.yaml").read_text())
    for key in ("pretrain", "calibration", "train", "eval"):
        raw[key].update(TINY_PARAMS[key])
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        params = load_params("params.yaml")
        for stage in (prepare, pretrain, calibrate, teacher):
            stage.run(params)
        write_json(paths.TUNE, {"chosen": {m: params.train.lr for m in ("qat", "fraqat")}})
        config = QuantConfig.from_params(params)
        save_run(paths.run_dir("fraqat", 0), quantized_copy(load_teacher(paths.TEACHER), config),
                 config, {"method": "fraqat", "seed": 0})
    finally:
        os.chdir(cwd)
    yield root


@contextmanager
def restored(root: Path, *rel: str) -> Iterator[None]:
    """Put ``rel`` (files or folders, or their absence) back as they were."""
    keep = root.parent / "keep"
    shutil.rmtree(keep, ignore_errors=True)
    for r in rel:
        if (root / r).exists():
            (keep / r).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (root / r).is_dir() else shutil.copy2)(root / r, keep / r)
    try:
        yield
    finally:
        for r in rel:
            target = root / r
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            if (keep / r).exists():
                os.replace(keep / r, target)


def shard_calibration(root: Path) -> None:
    path = root / paths.CALIBRATION
    t = load_tensors(path)
    total = sum(v.numel() * v.element_size() for v in t.values())
    save_tensors(path, t, shard_bytes=total // 3 + 1)
    (path / "shard-00001-of-00003.safetensors").unlink()


def half_checkpoint(root: Path) -> None:
    path = root / paths.checkpoint_dir("qat", 0) / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    torch.save({"step": 4, "fingerprint": "x", "model": torch.randn(512)}, path)
    cut(path)


TRAIN_QAT = ["train", "--method", "qat", "--seed", "0"]
# case -> (the paths it changes, how, the stage command, what the line says)
PROJECT_CASES: dict[str, tuple[tuple[str, ...], Callable[[Path], None], list[str], str]] = {
    "truncated-teacher-outputs": (
        (str(paths.TEACHER_OUTPUTS),), lambda r: cut(r / paths.TEACHER_OUTPUTS), TRAIN_QAT,
        "fraqat train: data/teacher_outputs.safetensors: not a readable safetensors file "
        "(SafetensorError: Error while deserializing header: incomplete metadata, file not "
        "fully covered); rebuild it with `dvc repro teacher`"),
    "missing-shard": (
        (str(paths.CALIBRATION),), shard_calibration, TRAIN_QAT,
        "fraqat train: data/calibration.safetensors: shard shard-00001-of-00003.safetensors "
        "missing (2 files, 3 expected); rebuild it with `dvc repro calibrate`"),
    "checkpoint-cut-in-half": (
        (str(paths.CHECKPOINTS),), half_checkpoint, TRAIN_QAT,
        "fraqat train: data/checkpoints/qat/s0/checkpoint.pt: not a readable torch.save file "
        "(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding "
        "central directory); delete it to restart this run from step 0"),
    "truncated-tune-json": (
        (str(paths.TUNE),), lambda r: cut(r / paths.TUNE), TRAIN_QAT,
        "fraqat train: reports/tune.json: not a readable JSON file (JSONDecodeError: "),
    "truncated-teacher-config": (
        ("data/teacher",), lambda r: cut(r / paths.TEACHER / "transformer/config.json"),
        ["teacher"], "fraqat teacher: data/teacher/transformer/config.json: not a readable "
        "JSON file (JSONDecodeError: "),
    "truncated-run-weights": (
        ("data/runs",), lambda r: cut(r / paths.run_dir("fraqat", 0) / "model.safetensors"),
        ["export"], "fraqat export: data/runs/fraqat/s0/model.safetensors: not a readable "
        "safetensors file (SafetensorError: "),
    "missing-run-config": (
        ("data/runs",), lambda r: (r / paths.run_dir("fraqat", 0) / "quant.json").unlink(),
        ["export"], "fraqat export: data/runs/fraqat/s0/quant.json: missing (expected a JSON "
        "file); rebuild it with `dvc repro train@fraqat`"),
}


@pytest.mark.parametrize("case", list(PROJECT_CASES))
def test_a_bad_file_through_the_cli_is_one_line(case, project, monkeypatch):
    changed, breaks, command, says = PROJECT_CASES[case]
    monkeypatch.chdir(project)
    with restored(project, *changed):
        breaks(project)
        before = snapshot(project)
        line = one_line(CliRunner().invoke(app, command))
        assert snapshot(project) == before  # nothing written, nothing removed
    assert line.startswith(says), line
    if case.startswith("truncated-t"):
        assert line.endswith({"truncated-teacher-outputs": "`dvc repro teacher`",
                              "truncated-tune-json": "`dvc repro tune`",
                              "truncated-teacher-config": "`dvc repro pretrain`"}[case])


# --- through the CLI: a real model's inputs ---------------------------------------------------

def _reference(folder: Path) -> Path:
    folder.mkdir()
    return folder


PIPELINE_CASES: dict[str, tuple[Callable[[Path, dict], None], str]] = {
    **{name: ((lambda b: lambda tmp, raw: b(Path(raw["model_path"])))(breaks),
              "{pipe}/" + says) for name, (breaks, says) in FOLDER_CASES.items()},
    "random-bytes-prompts": (
        lambda tmp, raw: (tmp / "prompts.txt").write_bytes(os.urandom(64) + b"\xff"),
        "{tmp}/prompts.txt: not UTF-8 text (byte 0x"),
    "utf16-prompts-without-bom": (
        lambda tmp, raw: (tmp / "prompts.txt").write_bytes("a red car\n".encode("utf-16-le")),
        "{tmp}/prompts.txt: holds NUL characters: a binary file, not text; save it as UTF-8"),
    "empty-reference-folder": (
        lambda tmp, raw: raw["eval"].update(reference_path=str(_reference(tmp / "real"))),
        "{tmp}/real: holds 0 image files (needs >= 2 .png/.jpg"),
}


@pytest.mark.parametrize("case", sorted(PIPELINE_CASES))
def test_a_bad_input_of_a_real_model_is_one_line(case, tiny_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / paths.CALIBRATION
    earlier.parent.mkdir()
    earlier.write_bytes(b"an earlier output")
    pipe = shutil.copytree(tiny_pipeline_dir("sana"), tmp_path / "pipe")
    raw = yaml.safe_load(PIPELINE_PROFILE.read_text())
    raw.update(model="sana-600m", model_path=str(pipe))
    if "prompts" in case:
        raw["prompts_path"] = str(tmp_path / "prompts.txt")
    breaks, says = PIPELINE_CASES[case]
    breaks(tmp_path, raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    before = snapshot(tmp_path)
    line = one_line(CliRunner().invoke(app, ["calibrate"]))
    assert line.startswith("fraqat calibrate: " + says.format(pipe=pipe, tmp=tmp_path)), line
    assert snapshot(tmp_path) == before and earlier.read_bytes() == b"an earlier output"


def test_the_advice_names_the_stage_dvc_yaml_says_writes_the_file(project, monkeypatch):
    from fraqat.checked import stage_writing

    monkeypatch.chdir(project)
    assert {p: stage_writing(p) for p in (
        "data/teacher_outputs.safetensors", "data/calibration.safetensors/shard-00000-of-00002"
        ".safetensors", "data/runs/qat/s0/model.safetensors", "data/samples/fp/s0.safetensors",
        "reports/tune.json", "params.yaml")} == {
        "data/teacher_outputs.safetensors": "teacher",
        "data/calibration.safetensors/shard-00000-of-00002.safetensors": "calibrate",
        "data/runs/qat/s0/model.safetensors": "train@qat",
        "data/samples/fp/s0.safetensors": "evaluate-teacher",
        "reports/tune.json": "tune", "params.yaml": None}
    monkeypatch.chdir(project.parent)  # outside any DVC repo: no advice to give
    assert stage_writing("repo/data/teacher_outputs.safetensors") is None


@pytest.mark.slow
def test_a_real_fraqat_process_prints_only_the_line(project):
    """As a user runs it: the stage's own stderr ends with the line, exit code 2."""
    import subprocess
    import sys

    from tests.tiny import env_for

    with restored(project, str(paths.TEACHER_OUTPUTS)):
        cut(project / paths.TEACHER_OUTPUTS)
        before = snapshot(project)
        proc = subprocess.run([sys.executable, "-m", "fraqat.cli", *TRAIN_QAT], cwd=project,
                              env=env_for(project), capture_output=True, text=True)
        assert snapshot(project) == before
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == PROJECT_CASES["truncated-teacher-outputs"][3]
    assert [x for x in proc.stderr.splitlines() if x.startswith("fraqat ")] == \
        [PROJECT_CASES["truncated-teacher-outputs"][3]]


def test_a_failed_stage_task_carries_the_stages_line():
    from pipelines.flows import StageError, _fail

    line = "fraqat prepare: /x/prompts.txt: not UTF-8 text (byte 0xc8 at offset 0); save it"
    out = f"Running stage 'prepare':\n> fraqat prepare\n{line}\nERROR: failed to reproduce " \
          "'prepare': failed to run: fraqat prepare, exited with 2"
    assert str(_fail("dvc repro prepare", 255, out)) == line
    crash = "Traceback (most recent call last):\nKeyError: 'v'\nERROR: failed to reproduce 'x'"
    err = _fail("dvc repro x", 255, crash)
    assert type(err) is StageError and str(err) == \
        "dvc repro x exited with 255: KeyError: 'v' / ERROR: failed to reproduce 'x'"


@pytest.mark.slow
def test_dvc_repro_of_a_stage_reading_a_bad_output_gives_the_line(project):
    """``dvc repro --single-item`` (as the flow runs it) leaves upstream alone: the stage meets
    the truncated cache and DVC's error follows the stage's line, which says what to rebuild."""
    import subprocess
    import sys

    from tests.tiny import env_for

    with restored(project, str(paths.TEACHER_OUTPUTS)):
        cut(project / paths.TEACHER_OUTPUTS)
        before = snapshot(project)
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item",
                               "train@qat"], cwd=project, env=env_for(project),
                              capture_output=True, text=True)
        assert snapshot(project) == before
    out = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode != 0 and not any("Traceback" in x for x in out), out[-20:]
    i = out.index(PROJECT_CASES["truncated-teacher-outputs"][3])
    assert out[i + 1].startswith("ERROR: failed to reproduce 'train@qat'") and \
        out[i + 1].endswith("exited with 2")
