"""The loss at the target bits through training: does a schedule's high-bit stage help?

The trainer logs ``target_loss``, the held-out distillation loss measured at the *deployed*
bits, every ``probe_every`` steps. A progressive schedule can only pay off if its stages above
the target already lower this number; these read it at three points of each run.
"""

from __future__ import annotations

import pandas as pd

from fraqat.report.tables import fmt, markdown_table

PROBE_POINTS = {"start": "after step 0", "before_target": "end of the high-bit stages",
                "final": "end"}


def probe_summary(logs: dict[tuple[str, int], pd.DataFrame], target_bits: float) -> pd.DataFrame:
    """The held-out loss measured at the target bits at three points, mean over seeds.

    ``start`` (after the first step), ``before_target`` (last probe while training above the
    target: progressive methods only) and ``final``. If the high-bit stages moved the weights
    toward a good low-bit solution, ``before_target`` is well below ``start``.
    """
    rows = []
    for (method, seed), df in logs.items():
        probes = df.dropna(subset=["target_loss"]) if "target_loss" in df else df.iloc[:0]
        if probes.empty:
            continue
        high = probes[probes["bits"] != target_bits]
        rows.append({"method": method, "seed": seed, "start": probes["target_loss"].iloc[0],
                     "before_target": (high["target_loss"].iloc[-1]
                                       if 0 < len(high) < len(probes) else float("nan")),
                     "final": probes["target_loss"].iloc[-1]})
    if not rows:
        return pd.DataFrame(columns=["method", *PROBE_POINTS])
    return pd.DataFrame(rows).groupby("method", sort=False)[list(PROBE_POINTS)].mean() \
        .reset_index()


def probe_markdown(probes: pd.DataFrame, bits: float) -> str:
    head = ["method", *(f"loss at W{bits:g}, {label}" for label in PROBE_POINTS.values())]
    return markdown_table(head, [[r["method"], *(fmt(r[p], 3) for p in PROBE_POINTS)]
                           for r in probes.to_dict("records")])
