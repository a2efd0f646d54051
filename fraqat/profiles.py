"""Profiles: small override files (``profiles/<name>.yaml``) applied on top of params.yaml.

A profile holds only the keys it changes, so the user's params.yaml stays the one full set of
knobs. It is never copied over params.yaml: the flow runs it as a DVC experiment in a scratch
copy (``python -m pipelines.flows --profile tiny``), and tools that build scratch projects
write :func:`merged` there.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from fraqat.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"


def names(root: Path = ROOT) -> list[str]:
    return sorted(p.stem for p in (root / "profiles").glob("*.yaml"))


def path_of(profile: str | Path, root: Path = ROOT) -> Path:
    """A profile's file from its name (``tiny``) or its path."""
    p = Path(profile)
    return p if p.suffix in (".yaml", ".yml") else root / "profiles" / f"{profile}.yaml"


def overrides(profile: str | Path, root: Path = ROOT) -> dict:
    """The profile's keys (nested as in params.yaml)."""
    return yaml.safe_load(path_of(profile, root).read_text()) or {}


def deep_merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra``'s keys; mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merged(profile: str | Path, base: Path | None = None) -> dict:
    """params.yaml (``base``, default the project's) with the profile applied."""
    base = base or ROOT / "params.yaml"
    return deep_merge(yaml.safe_load(base.read_text()) or {}, overrides(profile, base.parent))


def flat(nested: dict, prefix: str = "") -> dict[str, object]:
    """``{"train": {"steps": 30}}`` -> ``{"train.steps": 30}`` (lists stay values)."""
    out: dict[str, object] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def as_set_args(values: dict[str, object]) -> list[str]:
    """Dotted keys -> ``key=value`` strings as ``dvc exp run -S`` takes them (JSON values)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def requested(bits: float | None = None, methods: list[str] | None = None,
              seeds: list[int] | None = None, profile: str | None = None,
              set_items: list[str] | None = None, root: Path = ROOT) -> dict:
    """The dotted keys a run asks to change: the profile's, then ``key=value`` items, then the
    named options (each later one wins)."""
    values: dict[str, object] = {}
    if profile:
        path = path_of(profile, root)
        if not path.is_file():
            raise ParamsError(f"profile {profile!r} not found (allowed: "
                              f"{', '.join(names(root))})")
        values.update(flat(overrides(path)))
    for item in set_items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"--set {item!r}: expected key=value (e.g. train.steps=100)")
        values[key.strip()] = yaml.safe_load(value)
    values.update({k: v for k, v in (("bits", bits), ("methods", methods), ("seeds", seeds))
                   if v is not None})
    return values
