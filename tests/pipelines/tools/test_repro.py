"""pipelines.tools.repro: per-stage wall times parsed from DVC's own "Running stage" lines."""

from __future__ import annotations

import json
import os
import stat

from pipelines.tools import readme
from pipelines.tools.repro import main


def fake_dvc(tmp_path, monkeypatch, rc: int) -> None:
    fake = tmp_path / "dvc"
    fake.write_text("#!/bin/sh\necho \"Running stage 'a':\"\nsleep 0.8\n"
                    f"echo \"Running stage 'b@x-0':\"\nsleep 0.1\necho done\nexit {rc}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_times_each_stage_and_passes_exit_code(tmp_path, monkeypatch, capsys):
    fake_dvc(tmp_path, monkeypatch, 3)
    out_json = tmp_path / "r.json"
    assert main(["--out", str(out_json)]) == 3
    out = capsys.readouterr().out
    assert "total (dvc repro)" in out and "a " in out
    assert not out_json.exists()  # a failed run writes no timing


def test_json_of_a_finished_run_feeds_the_readme_block(tmp_path, monkeypatch, capsys):
    fake_dvc(tmp_path, monkeypatch, 0)
    out_json = tmp_path / "benchmarks" / "results" / "repro-x.json"
    assert main(["-f", "--out", str(out_json)]) == 0
    r = json.loads(out_json.read_text())
    assert list(r["stages"]) == ["a", "b@x-0"] and r["args"] == ["-f"]
    # generous bounds: the parser times the gap between lines, not the sleeps exactly
    assert r["stages"]["a"] > 0.5 > r["stages"]["b@x-0"] > 0.05
    assert r["total_s"] >= r["stages"]["a"] and r["cores"] >= 1 and r["cpu_s"] >= 0
    block = readme.repro_time(tmp_path)
    assert f"{r['total_s'] / 60:.1f} min" in block and "`a`" in block
    assert "benchmarks/results/repro-x.json" in block


def test_out_without_a_path_is_one_line(capsys):
    assert main(["--out"]) == 2
    assert "--out needs a path" in capsys.readouterr().err
