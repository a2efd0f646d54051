"""``dvc repro`` with a per-stage wall-time table at the end.

DVC prints "Running stage 'X':" before each stage it executes; the time from one such line
to the next (or to the end) is that stage's wall time, DVC's own bookkeeping included.

    python -m pipelines.tools.repro            # = dvc repro, then the table
    python -m pipelines.tools.repro -f train   # any dvc repro arguments pass through
    python -m pipelines.tools.repro --out benchmarks/results/repro-cpu2.json   # and a JSON

The JSON (stage wall times, the total, the CPU time of every child process, the machine and
the commit) is what the README's ``repro`` block quotes; write one only from a run that
executed every stage (``dvc repro -f`` or a fresh clone), on an otherwise idle machine.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def repro(args: list[str]) -> tuple[int, list[tuple[str, float]], float]:
    start = time.perf_counter()
    proc = subprocess.Popen(["dvc", "repro", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    timings: list[tuple[str, float]] = []
    current, since = None, start
    for line in proc.stdout:
        sys.stdout.write(line)
        m = STAGE_LINE.match(line)
        if m:
            now = time.perf_counter()
            if current:
                timings.append((current, now - since))
            current, since = m.group(1), now
    rc = proc.wait()
    end = time.perf_counter()
    if current:
        timings.append((current, end - since))
    return rc, timings, end - start


def machine() -> dict[str, object]:
    """Cores this process may use and the CPU model (/proc/cpuinfo where it has one)."""
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in
             (info.read_text().splitlines() if info.exists() else [])
             if line.startswith("model name")]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cores": cores, "cpu": names[0] if names else "unknown"}


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out: Path | None = None
    if "--out" in args:
        i = args.index("--out")
        if i + 1 >= len(args):
            print("repro: --out needs a path (e.g. benchmarks/results/repro-cpu2.json)",
                  file=sys.stderr)
            return 2
        out = Path(args.pop(i + 1))
        args.pop(i)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rc, timings, total = repro(args)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\n{'stage':32s} {'wall s':>8s}")
    for stage, seconds in timings:
        print(f"{stage:32s} {seconds:8.1f}")
    print(f"{'total (dvc repro)':32s} {total:8.1f}")
    print(f"{'CPU time of all processes':32s} {usage.ru_utime + usage.ru_stime:8.1f}")
    if out and rc == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "started": started, "commit": commit(), **machine(), "args": args,
            "stages": {k: round(v, 1) for k, v in timings}, "total_s": round(total, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}, indent=2) + "\n")
        print(f"wrote {out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
