"""The ``fraqat`` command: bad input gives one line and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fraqat.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.fixture
def bad_params(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text((ROOT / "params.yaml").read_text().replace("bits: 4 ", "bits: 1 ", 1))
    return path


def test_validate_good_file() -> None:
    result = runner.invoke(app, ["validate", "--params", str(ROOT / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(": ok")


def test_validate_bad_file(bad_params: Path) -> None:
    result = runner.invoke(app, ["validate", "--params", str(bad_params)])
    assert result.exit_code == 2
    line = one_line(result.stderr)
    assert line.startswith("params.yaml: bits:") and "(allowed:" in line
    assert result.stdout == ""


def test_validate_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", "--params", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert one_line(result.stderr).startswith("params.yaml: not found")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_bad_method(command: str) -> None:
    result = runner.invoke(app, [command, "--method", "nope"])
    assert result.exit_code == 2
    line = one_line(result.stderr)
    assert "'nope'" in line and "(allowed:" in line and "fraqat" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_gpu_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text().replace("device: cpu", "device: cuda", 1))
    result = runner.invoke(app, ["pretrain", "--params", str(path)])
    assert result.exit_code == 2
    assert one_line(result.stderr) == ("params.yaml: device: 'cuda' but no CUDA GPU is visible "
                                       "(allowed here: cpu, auto)")


def test_real_process_bad_params(bad_params: Path) -> None:
    """The installed entry point as a process: exit 2, one line on stderr, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "fraqat.cli", "validate", "--params",
                           str(bad_params)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 2
    assert one_line(proc.stderr).startswith("params.yaml: bits:")
    assert proc.stdout == ""


def test_every_stage_runs_on_the_pinned_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from fraqat.stages import prepare
    from fraqat.threads import STAGE_THREADS

    seen: list[int] = []
    monkeypatch.setattr(prepare, "run", lambda params: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = runner.invoke(app, ["prepare", "--params", str(ROOT / "params.yaml")])
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert seen == [STAGE_THREADS]


@pytest.mark.parametrize("value", ["two", "0", "1.5"])
def test_a_bad_worker_count_is_one_line_and_runs_nothing(monkeypatch: pytest.MonkeyPatch,
                                                         value: str) -> None:
    from fraqat.stages import prepare

    ran: list[bool] = []
    monkeypatch.setattr(prepare, "run", lambda params: ran.append(True))
    monkeypatch.setenv("FRAQAT_JOBS", value)
    result = runner.invoke(app, ["prepare", "--params", str(ROOT / "params.yaml")])
    assert result.exit_code == 1 and not ran
    assert one_line(result.stderr) == (f"fraqat prepare: FRAQAT_JOBS='{value}': expected a "
                                       "whole number of worker processes >= 1 (or unset: one "
                                       "per core)")
