"""fraqat.profiles: override files on top of params.yaml, and the keys a run asks to change."""

from __future__ import annotations

import pytest

from fraqat import profiles
from fraqat.errors import ParamsError


def test_requested_applies_profile_then_set_items_then_named_options() -> None:
    values = profiles.requested(bits=3, profile="tiny",
                                set_items=["train.steps=7", "seeds=[0, 1]"])
    tiny = profiles.flat(profiles.overrides("tiny"))
    assert values["bits"] == 3 and values["train.steps"] == 7 and values["seeds"] == [0, 1]
    assert {k: values[k] for k in tiny if k not in ("train.steps", "seeds", "bits")} == \
        {k: v for k, v in tiny.items() if k not in ("train.steps", "seeds", "bits")}


def test_requested_refuses_an_unknown_profile_and_an_item_without_equals() -> None:
    with pytest.raises(ParamsError, match="profile 'nope' not found .*allowed: .*tiny"):
        profiles.requested(profile="nope")
    with pytest.raises(ParamsError, match=r"--set 'train.steps': expected key=value"):
        profiles.requested(set_items=["train.steps"])


def test_merged_keeps_params_keys_the_profile_does_not_name() -> None:
    merged = profiles.merged("tiny")
    assert merged["export"] == profiles.deep_merge(
        profiles.yaml.safe_load((profiles.ROOT / "params.yaml").read_text())["export"],
        profiles.overrides("tiny").get("export", {}))
    assert profiles.flat({"a": {"b": 1, "c": []}}) == {"a.b": 1, "a.c": []}
