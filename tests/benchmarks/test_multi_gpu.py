"""``benchmarks/multi_gpu.py --tiny`` runs on the CPU: DDP in-process, FSDP on 2 gloo ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import multi_gpu

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_ddp_fsdp_and_table(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    multi_gpu.main(["ddp", "--tiny", "--steps", "2", "--warmup", "1", "--traj-steps", "2",
                    "--json", str(tmp_path / "ddp-1.json")])
    fsdp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "benchmarks.multi_gpu", "fsdp", "--tiny", "--model", "flux-schnell",
         "--checkpointing", "--steps", "2", "--warmup", "1", "--json",
         str(tmp_path / "fsdp.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    multi_gpu.main(["table", str(tmp_path / "ddp-1.json"), str(tmp_path / "fsdp.json"),
                    "--json", str(tmp_path / "all.json")])
    out = capsys.readouterr().out
    assert "| w4a8 | 1 | 8 |" in out and "| flux-schnell |" in out
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["device"] == ["cpu (1 gloo processes)", "cpu (2 gloo processes)"]
    rows = {(r["mode"], r.get("variant") or r["model"]): r for r in merged["rows"]}
    assert rows[("ddp", "w4a8")]["trajectory_max_rel_diff"] == 0.0  # 1 GPU vs itself
    flux = rows[("fsdp", "flux-schnell")]
    assert flux["gpus"] == 2 and flux["checkpointing"] and flux["n"] == 2
    assert flux["median_ms"] > 0 and flux["loss"] == flux["loss"]  # finite, not NaN
