"""dvc.yaml, params.yaml and profiles/tiny.yaml agree with each other and with the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fraqat import paths, profiles
from fraqat.cli import app
from fraqat.params import load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def keys(d: dict, pre: str = "") -> set[str]:
    """Every key of a nested mapping, dotted."""
    return {pre + k for k in d} | {x for k, v in d.items() if isinstance(v, dict)
                                   for x in keys(v, f"{pre}{k}.")}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_is_a_fraqat_command_with_known_params_and_deps(name):
    stage = STAGES[name]
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    program, sub, *_ = stage["cmd"].split()
    assert program == "fraqat" and sub in commands
    assert {p for p in stage.get("params", []) if isinstance(p, str)} <= keys(PARAMS)
    for dep in stage.get("deps", []):
        if dep.startswith("fraqat/"):
            assert (ROOT / dep).is_file(), dep


@pytest.mark.parametrize("name", profiles.names())
def test_profile_overrides_a_few_known_keys_and_validates(name):
    """Profiles are override files: only keys params.yaml has, far fewer than all of them."""
    own = profiles.flat(profiles.overrides(name))
    assert set(own) <= keys(PARAMS) and len(own) < len(keys(PARAMS)) // 2
    parse_params(profiles.merged(name))


def test_every_registry_method_becomes_train_and_evaluate_stages(tmp_path):
    """dvc.yaml's matrices read ``methods`` (one stage per method; it runs every seed): any
    method the registry has runs through ``dvc exp run -S 'methods=[...]'`` with no edit of
    dvc.yaml."""
    import shutil
    import subprocess

    from fraqat.params import TRAINED_METHODS

    shutil.copyfile(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {**PARAMS, "methods": list(TRAINED_METHODS)}))
    load_params(tmp_path / "params.yaml")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    listed = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=tmp_path, check=True,
                            capture_output=True, text=True).stdout.split()
    for method in TRAINED_METHODS:
        assert {f"train@{method}", f"evaluate@{method}"} <= set(listed), method


@pytest.mark.parametrize(("stage", "files"), [
    ("train", (paths.run_dir, paths.train_metrics, paths.train_log)),
    ("evaluate", (paths.samples_path, paths.eval_metrics))])
def test_a_method_stage_owns_its_method_folders_for_every_seed(stage, files):
    """A grouped stage writes all its seeds: it reads ``seeds`` and declares one folder per
    kind of output, the one that :mod:`fraqat.paths` puts every seed's file into."""
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in STAGES[stage]["outs"]]
    declared = {o.replace("${item.method}", "qat") for o in outs}
    assert "seeds" in STAGES[stage]["params"]
    for seed in (0, 3):
        for path in files:
            assert any(Path(d) in path("qat", seed).parents for d in declared), path.__name__
