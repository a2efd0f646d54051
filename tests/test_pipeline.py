"""End-to-end: the whole DVC graph on the tiny profile, in a scratch copy of the repo.

Slow-marked but run in CI: the tiny ``dvc repro`` took 2-3.5 minutes on a shared 2-core machine,
the module 5-6. Checks that every stage runs, the key outputs exist, a second ``dvc repro``
runs nothing, ``dvc exp run -S bits=3`` changes the run, and a bad params.yaml stops with one
line and writes nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fraqat import paths
from tests.tiny import env_for, make_tiny_repo

KEY_OUTPUTS = ("reports/comparison.csv", "reports/comparison.md", "reports/metrics.json",
               "data/export/model.onnx", "reports/export.json", "reports/convert.json")


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env_for(repo),
                          capture_output=True, text=True)
    if check and proc.returncode:
        pytest.fail(f"dvc {' '.join(args)} exited {proc.returncode}:\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def stages(repo: Path) -> list[str]:
    out = dvc(repo, "stage", "list", "--name-only").stdout
    return out.split()


def files(repo: Path) -> set[str]:
    """Every file of ``repo`` except git's and DVC's own scratch (``.dvc/tmp``)."""
    rels = (p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    return {r for r in rels if not r.startswith((".git/", ".dvc/tmp/"))}


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, str, float]:
    """A scratch repo after one full ``dvc repro`` on the tiny profile: (repo, output, seconds)."""
    repo = make_tiny_repo(tmp_path_factory.mktemp("tiny") / "repo")
    start = time.perf_counter()
    proc = dvc(repo, "repro")
    seconds = time.perf_counter() - start
    print(f"tiny dvc repro: {seconds:.1f} s")
    return repo, proc.stdout + proc.stderr, seconds


@pytest.mark.slow
def test_every_stage_runs_and_writes_its_outputs(tiny):
    repo, output, _ = tiny
    assert ran(output) == set(stages(repo))
    for rel in KEY_OUTPUTS:
        assert (repo / rel).exists(), rel
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for method in params["methods"]:
        for seed in params["seeds"]:
            assert (repo / paths.train_metrics(method, seed)).exists()
    json.loads((repo / "reports/metrics.json").read_text())
    convert = json.loads((repo / "reports/convert.json").read_text())
    assert convert["converted_bytes"] <= 0.3 * convert["run_bytes"], convert
    assert dvc(repo, "status").stdout.strip() == "Data and pipelines are up to date."


@pytest.mark.slow
def test_second_repro_runs_nothing(tiny):
    repo, _, _ = tiny
    proc = dvc(repo, "repro")
    out = proc.stdout + proc.stderr
    assert not ran(out)
    assert "Data and pipelines are up to date" in out


@pytest.mark.slow
def test_exp_run_set_param_changes_the_run(tiny):
    """``dvc exp run -S bits=3`` reruns the quantized branches at W3A8 (runs after the above)."""
    repo, _, _ = tiny
    proc = dvc(repo, "exp", "run", "-S", "bits=3")
    out = proc.stdout + proc.stderr
    assert {s for s in ran(out) if s.startswith("train@")} == {
        s for s in stages(repo) if s.startswith("train@")}
    assert {"prepare", "pretrain", "calibrate", "teacher"}.isdisjoint(ran(out))
    assert yaml.safe_load((repo / "params.yaml").read_text())["bits"] == 3
    metrics = [json.loads(p.read_text()) for p in (repo / "reports/train").glob("*/*.json")]
    assert metrics and all((m["weight_bits"], m["act_bits"]) == (3, 8) for m in metrics)
    assert "W3A8" in (repo / "reports/comparison.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(("key", "value"), [("bits", 1), ("train.steps", 0)])
def test_bad_params_stop_with_one_line_and_write_nothing(tmp_path, key, value):
    repo = make_tiny_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    node = params
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = files(repo)

    check = subprocess.run([sys.executable, "-m", "fraqat.cli", "validate"], cwd=repo,
                           env=env_for(repo), capture_output=True, text=True)
    assert check.returncode == 2
    assert check.stderr.strip().startswith(f"params.yaml: {key}: ")
    assert len(check.stderr.strip().splitlines()) == 1

    proc = dvc(repo, "repro", check=False)
    assert proc.returncode != 0
    assert f"params.yaml: {key}: " in proc.stderr
    assert files(repo) == before  # no output, no dvc.lock, no .gitignore entries

