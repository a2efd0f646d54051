"""pipelines.experiments.ablation: rows from `dvc exp show --json` and the written report."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.experiments.ablation import experiments
from pipelines.experiments.ablation_report import (
    cell_table,
    findings,
    size_table,
    trend,
    write_report,
)


def _metrics(qat: float, fraqat: float, ci: tuple[float, float]) -> dict:
    out = {}
    for metric in ("fid", "heldout_loss", "teacher_mse"):
        out |= {f"{metric}.qat": qat, f"{metric}.fraqat": fraqat,
                f"{metric}.qat-target-steps": qat * 1.5, f"{metric}_std.qat": qat / 50,
                f"test.{metric}.delta_pct": 100 * (fraqat / qat - 1),
                f"test.{metric}.ci_low_pct": ci[0], f"test.{metric}.ci_high_pct": ci[1],
                f"test.{metric}.ttest_p": 0.01}
    return out | {"probe.start.fraqat": 0.1, "probe.before_target.fraqat": 0.09,
                  "probe.final.fraqat": fraqat}


def _exp(name: str, bits: int, qat: float, fraqat: float, ci=(-1.0, 1.0), stamp="2026-11-25T10",
         state: str | None = None) -> dict:
    data = {"timestamp": stamp,
            "params": {"params.yaml": {"data": {
                "bits": bits, "seeds": [0, 1, 2], "quant": {"granularity": "tensor"},
                "schedule": {"final_fraction": 0.7, "step": 0.5, "fraqat_kind": "fraqat"},
                "train": {"steps": 400, "lr_schedule": "restart"}}}},
            "metrics": {"reports/metrics.json": {"data": _metrics(qat, fraqat, ci)}}}
    exp = {"name": name, "revs": [{"rev": f"rev-{name}-{stamp}", "name": name, "data": data}]}
    return exp | ({"executor": {"state": state}} if state else {})


def test_rows_skip_unfinished_and_keep_the_newest_run_of_a_name():
    queued = {"name": "q", "revs": [{"rev": "def", "data": {"params": {}, "metrics": {}}}]}
    show = [{"rev": "workspace", "experiments": None},
            {"rev": "old", "experiments": [_exp("w4", 4, 0.010, 0.030, stamp="2026-11-24")]},
            {"rev": "HEAD", "experiments": [_exp("w4", 4, 0.010, 0.012), queued,
                                            _exp("r", 4, 0.010, 0.001, state="running"),
                                            _exp("w3", 3, 0.050, 0.045)]}]
    rows = experiments(show)
    assert sorted(r["name"] for r in rows) == ["w3", "w4"]
    cells = cell_table(rows).set_index("experiment")
    assert cells.loc["w4", "heldout_loss.fraqat"] == 0.012  # the newer w4
    assert cells.loc["w3", "heldout_loss.delta_pct"] == pytest.approx(-10.0)
    assert cells.loc["w3", "control_delta_pct"] == pytest.approx(100 * (0.045 / 0.075 - 1))
    assert cells.loc["w3", "schedule"] == "step 0.5, 70% at target"


def _cells(*specs) -> pd.DataFrame:
    return cell_table(experiments([{"rev": "HEAD", "experiments": [_exp(*s) for s in specs]}]))


def test_findings_promote_only_a_significant_win_on_both_metrics():
    lose = findings(_cells(("a", 4, 0.010, 0.012, (10.0, 30.0))), pd.DataFrame())
    assert any("In no cell does FraQAT beat standard QAT by ≥ 4 %" in s for s in lose)
    assert any("QAT significantly better in 1" in s for s in lose)
    assert any("0.90–0.90× its value after the first step" in s for s in lose)
    noisy = findings(_cells(("b", 4, 0.010, 0.009, (-20.0, 1.0))), pd.DataFrame())
    assert any("but not significantly: no schedule is promoted" in s for s in noisy)
    win = findings(_cells(("c", 4, 0.010, 0.009, (-15.0, -5.0))), pd.DataFrame())
    assert any("significantly, in: `c`" in s for s in win)


def test_size_table_pairs_variants_with_their_qat_by_seed():
    runs = [{"variant": v, "seed": s, "heldout_loss": x, "teacher_mse": x / 2}
            for v, xs in {"qat": (1.0, 2.0), "fraqat-final70": (1.1, 2.3),
                          "qat-channel": (1.0, 1.0), "fraqat-channel-final70": (0.9, 0.8)}.items()
            for s, x in enumerate(xs)]
    sizes = size_table([{"label": "big", "params_count": 2e6, "runs": runs}]).set_index("variant")
    assert sizes.loc["fraqat-final70", "reference"] == "qat"
    assert sizes.loc["fraqat-final70", "heldout_loss.delta_pct"] == pytest.approx(
        100 * (3.4 / 3.0 - 1))
    assert sizes.loc["fraqat-channel-final70", "heldout_loss.delta_pct"] == pytest.approx(-15.0)
    assert sizes.loc["fraqat-channel-final70", "params_m"] == 2.0


def test_write_report_writes_markdown_csv_and_plots(tmp_path):
    cells = _cells(("w4", 4, 0.010, 0.012, (10.0, 30.0)), ("w3", 3, 0.05, 0.06, (5.0, 35.0)))
    traces = {"w4": {"qat": pd.DataFrame({"step": [0, 50], "target_loss": [0.1, 0.02]})}}
    out = tmp_path / "reports" / "ablation"
    write_report(cells, pd.DataFrame(), traces, out)
    md = (out / "ablation.md").read_text()
    assert "## Finding" in md and "| `w4` | 4 | tensor |" in md and "+20.0% [+10.0, +30.0]" in md
    assert pd.read_csv(out / "ablation.csv")["experiment"].tolist() == ["w3", "w4"]
    for name in ("ablation_deltas.png", "ablation_probes.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in md  # linked beside the markdown
    assert "Regime map" not in md  # no regime report yet
    (out.parent / "regime").mkdir()
    (out.parent / "regime" / "regime.md").write_text(
        "# r\n\n## Regime map\n\n| map |\n\n- finding\n\n## CPU cells\n\n| cpu |\n")
    write_report(cells, pd.DataFrame(), traces, out)
    md = (out / "ablation.md").read_text()
    assert "## Regime map: outliers" in md and "- finding" in md and "| cpu |" not in md


def test_render_rebuilds_the_report_from_the_committed_csv(tmp_path):
    from pipelines.experiments.ablation import main

    out = tmp_path / "ablation"
    write_report(_cells(("w4", 4, 0.010, 0.012, (10.0, 30.0))), pd.DataFrame(), {}, out)
    (out / "ablation.md").unlink()
    assert main(["render", "--out", str(out), "--sweeps", "no-such-dir/*.json"]) == 0
    assert "| `w4` | 4 | tensor |" in (out / "ablation.md").read_text()


def test_trend_reads_one_axis_with_the_others_fixed():
    cells = _cells(("w4", 4, 0.010, 0.012), ("w3", 3, 0.05, 0.055), ("w2", 2, 0.3, 0.3))
    assert trend(cells, "bits") == ["tensor, step 0.5, 70% at target, steps 400: held-out loss "
                                    "Δ% 2 → +0.0%, 3 → +10.0%, 4 → +20.0%"]
    assert trend(cells, "steps") == []  # one budget only
