"""Experiments side by side: one column per DVC experiment, one row per changed param or
headline metric, in 120 columns (``dvc exp show`` puts every param, dep and metric in a row).

    python -m pipelines.tools.exps            # the workspace, HEAD and its experiments
    python -m pipelines.tools.exps --all      # every headline metric, not just FID and loss

Reads :func:`dvc.api.exp_show`; the metrics are ``reports/metrics.json``'s headline keys.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence

WIDTH = 120
CELL = 20  # longer values (lists of methods) are cut with "…"
SHORT = re.compile(r"^(fid|heldout_loss)\.[^.]+$|^test\.\w+\.delta_pct$|^claim\.")
METRIC = re.compile(r"^(fid|heldout_loss|teacher_mse|test|fair|claim)\.")
META = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}


def _name(row: dict) -> str:
    return _cell(str(row.get("Experiment") or row.get("rev") or "?"))


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    if text.startswith("["):  # dvc.api gives lists as their repr
        text = text.strip("[]").replace("'", "").replace(" ", "")
    return text if len(text) <= CELL else text[:CELL - 1] + "…"


def table(rows: Sequence[dict], all_metrics: bool = False, width: int = WIDTH) -> str:
    """The changed params, then the metrics, as rows; experiments as columns (as many as fit)."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in META]
    params = [k for k in keys if not METRIC.match(k) and "/" not in k
              and len({_cell(r.get(k)) for r in rows}) > 1]
    metrics = sorted(k for k in keys if METRIC.match(k) and (all_metrics or SHORT.match(k)))
    labels = ["", *params, *metrics]
    label_w = max(map(len, labels))
    columns = [[_name(r), *(_cell(r.get(k)) for k in params + metrics)] for r in rows]
    shown, used = [], label_w
    for col in columns:
        w = max(map(len, col)) + 2
        if used + w > width:
            break
        shown.append((w, col))
        used += w
    lines = [labels[i].ljust(label_w) + "".join(c[i].rjust(w) for w, c in shown)
             for i in range(len(labels))]
    lines.insert(1 + len(params), "-" * used)
    if len(shown) < len(columns):
        lines.append(f"({len(columns) - len(shown)} more experiment(s) past {width} columns: "
                     "pass their names, or --num fewer)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.tools.exps",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("experiments", nargs="*", help="names or revisions (default: all of HEAD's)")
    ap.add_argument("--all", action="store_true", help="every headline metric")
    ap.add_argument("--num", type=int, default=1, help="commits back from HEAD (default 1)")
    ap.add_argument("--repo", default=".")
    args = ap.parse_args(argv)
    import dvc.api

    rows = dvc.api.exp_show(args.repo, num=args.num)
    if args.experiments:
        rows = [r for r in rows if _name(r) in args.experiments or r.get("rev") in
                args.experiments or r.get("rev") == "workspace"]
    print(table(rows, args.all))


if __name__ == "__main__":
    main()
