"""pipelines.ablation: rows from `dvc exp show --json` (DVC 3 layout) and the written report."""

from __future__ import annotations

import pytest

from pipelines.ablation import experiments, table, write_report


def _exp(name: str, bits: int, qat: float, fraqat: float) -> dict:
    metrics = {f"{m}.{k}": v for m in ("fid", "heldout_loss", "teacher_mse")
               for k, v in (("qat", qat), ("fraqat", fraqat))}
    data = {"params": {"params.yaml": {"data": {"bits": bits, "seeds": [0, 1],
                                                "quant": {"granularity": "tensor"}}}},
            "metrics": {"reports/metrics.json": {"data": metrics}}}
    return {"name": name, "revs": [{"rev": "abc", "name": name, "data": data}]}


def test_rows_skip_unfinished_and_report_states_the_verdict(tmp_path):
    queued = {"name": "q", "revs": [{"rev": "def", "data": {"params": {}, "metrics": {}}}]}
    running = {**_exp("r", 4, 0.010, 0.001), "executor": {"state": "running"}}
    show = [{"rev": "workspace", "experiments": None},
            {"rev": "HEAD", "experiments": [_exp("w4", 4, 0.010, 0.012), queued, running,
                                            _exp("w3", 3, 0.050, 0.045)]}]
    rows = experiments(show)
    assert [r["name"] for r in rows] == ["w4", "w3"]
    df = table(rows)
    assert df.loc[df.experiment == "w3", "heldout_loss.delta_pct"].item() == pytest.approx(-10.0)
    assert df.loc[df.experiment == "w4", "granularity"].item() == "tensor"
    out = tmp_path / "ablation.md"
    write_report(df, out)
    assert "beats standard QAT by ≥ 4 % on the held-out loss in: w3." in out.read_text()
    assert (tmp_path / "ablation.csv").exists()
