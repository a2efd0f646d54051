"""pipelines.tools.exps: experiments as columns, only changed params, headline metrics."""

from __future__ import annotations

from pipelines.tools.exps import table


def _row(name: str, bits: int, fid: float) -> dict:
    return {"Experiment": name, "rev": name[:7], "typ": "branch_commit", "bits": bits,
            "seeds": [0, 1], "fid.qat": fid, "fid_std.qat": 1.0, "teacher_mse.qat": 0.1,
            "fraqat/io.py": "abc123"}


def test_changed_params_and_short_metrics_fit_in_120_columns():
    rows = [{**_row("x", 4, 20.0), "Experiment": None, "rev": "workspace"},
            *(_row(f"exp-{i}", 3 + i % 2, 20.0 + i) for i in range(20))]
    out = table(rows)
    lines = out.splitlines()
    assert all(len(line) <= 120 for line in lines)
    assert lines[0].split()[:2] == ["workspace", "exp-0"]
    labels = [line.split()[0] for line in lines[1:] if line and not line.startswith("-")]
    assert labels[:2] == ["bits", "fid.qat"]  # seeds did not change; deps are not shown
    assert "more experiment(s) past 120 columns" in lines[-1]
    assert "teacher_mse.qat" in table(rows[:3], all_metrics=True)
    rows[1]["methods"] = ["ptq", "qat", "qat-warmup", "fraqat", "fraqat-late"]
    assert "ptq,qat,qat-warmup,…" in table(rows)  # long values are cut, columns still fit
