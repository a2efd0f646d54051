"""fraqat.params: the repo's params.yaml loads; every bad value gives one clear line."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from fraqat.errors import ParamsError
from fraqat.params import Params, load_params, parse_params
from fraqat.quant.layers import QuantConfig

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())

# (dotted key -> bad value, dotted key reported)
BAD = [
    ({"frobnicate": 1}, "frobnicate"),
    ({"train.frobnicate": 1}, "train.frobnicate"),
    ({"bits": 1}, "bits"),
    ({"bits": 17}, "bits"),
    ({"bits": "x"}, "bits"),
    ({"act_bits": None}, "act_bits"),
    ({"train.steps": -1}, "train.steps"),
    ({"train.lr": 0}, "train.lr"),
    ({"methods": ["abc"]}, "methods.0"),
    ({"methods": ["qat", "qat"]}, "methods"),
    ({"seeds": []}, "seeds"),
    ({"seeds": [-1]}, "seeds"),
    ({"quant.granularity": "row"}, "quant.granularity"),
    ({"quant.group_size": 0}, "quant.group_size"),
    ({"schedule.shape": "zigzag"}, "schedule.shape"),
    ({"schedule.fp_warmup": 1.0}, "schedule.fp_warmup"),
    ({"schedule.step": 0}, "schedule.step"),
    ({"model": "sd"}, "model"),
    ({"train": 5}, "train"),
]


def with_overrides(overrides: dict) -> dict:
    raw = copy.deepcopy(RAW)
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return raw


def check_line(msg: str, key: str) -> None:
    assert "\n" not in msg
    assert msg.startswith(f"params.yaml: {key}:"), msg
    assert "(allowed:" in msg, msg


def test_repo_params_load() -> None:
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.bits == RAW["bits"] and params.act_bits == RAW["act_bits"]
    assert parse_params(RAW) == params


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_schema_defaults_are_params_yaml() -> None:
    """An empty params.yaml runs the committed default: no default drifts from the file."""
    defaults = _leaves(Params().model_dump())
    committed = _leaves(load_params(ROOT / "params.yaml").model_dump())
    drift = {k: (defaults[k], committed[k]) for k in committed if defaults[k] != committed[k]
             or type(defaults[k]) is not type(committed[k])}
    assert not drift, f"pydantic default vs params.yaml: {drift}"
    assert Params() == load_params(ROOT / "params.yaml")


@pytest.mark.parametrize(("overrides", "key"), BAD, ids=[k for _, k in BAD])
def test_bad_values_one_line(overrides: dict, key: str) -> None:
    with pytest.raises(ParamsError) as info:
        parse_params(with_overrides(overrides))
    check_line(str(info.value), key)
    assert info.value.exit_code == 2


def test_unknown_key_lists_allowed_keys() -> None:
    with pytest.raises(ParamsError, match=r"unknown key \(allowed: .*steps.*lr"):
        parse_params(with_overrides({"train.frobnicate": 1}))
    with pytest.raises(ParamsError, match=r"one of tensor, channel, group"):
        parse_params(with_overrides({"quant.granularity": "row"}))


def test_not_a_mapping() -> None:
    for raw in ([1, 2], "bits: 4", None):
        with pytest.raises(ParamsError, match=r"^params\.yaml: .*\(allowed:"):
            parse_params(raw)


def test_load_params_overrides_and_errors(tmp_path: Path) -> None:
    p = load_params(ROOT / "params.yaml", overrides={"bits": 3, "quant.granularity": "group"})
    assert p.bits == 3 and p.quant.granularity == "group"
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("bits: [4\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_params(empty) == Params()  # every key has a default


def test_quant_config_from_params() -> None:
    p = parse_params(with_overrides({"bits": 4.5, "quant.keep_8bit": ["proj_out"]}))
    cfg = QuantConfig.from_params(p)
    assert isinstance(cfg, QuantConfig)
    assert cfg.weight_bits == 4.5 and cfg.act_bits == p.act_bits
    assert cfg.keep_8bit == ["proj_out"] and cfg.granularity == p.quant.granularity
    assert QuantConfig.from_params(p, weight_bits=8).weight_bits == 8


def test_quant_config_is_the_bits_plus_the_quant_section() -> None:
    """The library's own defaults are the schema's: QuantConfig() quantizes as params.yaml."""
    import dataclasses

    from fraqat.params import QuantParams
    from fraqat.quant.core import GRANULARITIES

    config = {f.name: getattr(QuantConfig(), f.name) for f in dataclasses.fields(QuantConfig)}
    bits = {"weight_bits": Params().bits, "act_bits": Params().act_bits}
    assert config == {**bits, **QuantParams().model_dump()}
    assert QuantConfig.from_params(Params()) == QuantConfig()
    assert QuantParams.model_fields["granularity"].annotation.__args__ == GRANULARITIES
