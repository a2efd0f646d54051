"""dvc.yaml, params.yaml and profiles/tiny.yaml agree with each other and with the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fraqat.cli import app
from fraqat.params import load_params

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


def test_tiny_profile_is_valid_and_has_the_keys_of_params_yaml():
    load_params(ROOT / "profiles/tiny.yaml")
    assert keys(yaml.safe_load((ROOT / "profiles/tiny.yaml").read_text())) == keys(PARAMS)
