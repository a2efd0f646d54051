"""pipelines.experiments.exp_files: reports an experiment's commit holds, read by rev."""

from __future__ import annotations

import json
import subprocess

from pipelines.experiments.exp_files import metrics_at, read_at


def test_reports_are_read_from_the_commit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports/train").mkdir(parents=True)
    (tmp_path / "reports/train/qat-s0.json").write_text(json.dumps({"final_loss": 0.1}))
    (tmp_path / "reports/teacher.json").write_text(json.dumps({"max_kurtosis": 3.0}))
    for cmd in (["init", "-q"], ["add", "-A"],
                ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "exp"]):
        subprocess.run(["git", *cmd], check=True, capture_output=True)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    (tmp_path / "reports/train/qat-s0.json").write_text("{}")  # the workspace is not read
    got = metrics_at(rev, "reports/train", "reports/eval", files=("reports/teacher.json",))
    assert got == {"reports/train/qat-s0.json": {"data": {"final_loss": 0.1}},
                   "reports/teacher.json": {"data": {"max_kurtosis": 3.0}}}
    assert read_at(rev, "reports/details.json") == {} and read_at("", "x") == {}
