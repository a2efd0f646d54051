"""``dvc repro`` with a per-stage wall-time table at the end.

DVC prints "Running stage 'X':" before each stage it executes; the time from one such line
to the next (or to the end) is that stage's wall time, DVC's own bookkeeping included.

    python -m pipelines.tools.repro            # = dvc repro, then the table
    python -m pipelines.tools.repro -f train   # any dvc repro arguments pass through
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

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


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--timings-json" in args
    if as_json:
        args.remove("--timings-json")
    rc, timings, total = repro(args)
    print(f"\n{'stage':32s} {'wall s':>8s}")
    for stage, seconds in timings:
        print(f"{stage:32s} {seconds:8.1f}")
    print(f"{'total (dvc repro)':32s} {total:8.1f}")
    if as_json:
        print(json.dumps({"stages": dict(timings), "total": total}))
    return rc


if __name__ == "__main__":
    sys.exit(main())
