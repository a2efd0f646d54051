"""pipelines.tools.repro: per-stage wall times parsed from DVC's own "Running stage" lines."""

from __future__ import annotations

import os
import stat

from pipelines.tools.repro import main


def test_times_each_stage_and_passes_exit_code(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "dvc"
    fake.write_text("#!/bin/sh\necho \"Running stage 'a':\"\nsleep 0.8\n"
                    "echo \"Running stage 'b@x-0':\"\nsleep 0.1\necho done\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert main(["--timings-json"]) == 3
    out = capsys.readouterr().out
    import json

    timings = json.loads(out.strip().splitlines()[-1])
    assert list(timings["stages"]) == ["a", "b@x-0"]
    # generous bounds: the parser times the gap between lines, not the sleeps exactly
    assert timings["stages"]["a"] > 0.5 > timings["stages"]["b@x-0"] > 0.05
    assert "total (dvc repro)" in out
