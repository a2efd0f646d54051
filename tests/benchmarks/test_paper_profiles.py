"""The full-size training benchmark's plumbing at toy sizes on the CPU (no memory numbers)."""

from __future__ import annotations

import json
import sys

from fraqat import needs


def test_tiny_run_writes_every_variant(tmp_path, monkeypatch):
    from benchmarks import paper_profiles

    out = tmp_path / "pp.json"
    monkeypatch.setattr(sys, "argv", ["paper_profiles", "--tiny", "--json", str(out),
                                      "--models", "pixart-sigma", "--rounds", "1",
                                      "--warmup", "1"])
    paper_profiles.main()
    data = json.loads(out.read_text())
    (model,) = data["models"]
    assert model["model"] == "pixart-sigma" and model["static_bytes_per_param"] == 16
    assert {(r["batch"], r["checkpointing"]) for r in model["rows"]} == {
        (1, False), (1, True), (2, False), (2, True)}
    assert all("error" not in r and r["median_ms"] > 0 for r in model["rows"])
    assert needs.activations(data) == {}  # no GPU peaks: the plan keeps its other rules
