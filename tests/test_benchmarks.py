"""The GPU benchmarks import from the repository root and run their CPU smoke sizes."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import fake_quant


def test_fake_quant_benchmark_runs_from_the_root(tmp_path: Path) -> None:
    out = tmp_path / "fq.json"
    assert fake_quant.main(["--device", "cpu", "--size", "32", "--repeats", "1", "--reps", "1",
                            "--dtypes", "float32", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    ours = [r for r in res["rows"] if r["path"] in ("triton", "reference")]
    assert len(ours) == 6 and all(r["exact"] == "yes" for r in ours)
    assert res["meta"]["device"] == "cpu" and res["host_overhead"]
