"""Markdown tables and number formatting shared by every report the project writes."""

from __future__ import annotations

import math
from collections.abc import Sequence


def isnan(x: object) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x: float | None, digits: int = 3, std: float | None = None) -> str:
    """``x`` (± ``std``) to ``digits``; small values in significant digits; '-' when missing."""
    if x is None or isnan(x):
        return "-"
    s = f"{x:.{digits}g}" if abs(x) < 1e-2 and x != 0 else f"{x:.{digits}f}"
    if std is not None and not isnan(std):
        s += f" ± {std:.2g}" if abs(std) < 1e-2 and std != 0 else f" ± {std:.{digits}f}"
    return s


def fmt_delta(d: float | None, ci: Sequence[float] | None = None) -> str:
    """A signed percentage, with its interval in brackets when given."""
    if d is None or isnan(d):
        return "-"
    if ci is None or any(isnan(c) for c in ci):
        return f"{d:+.1f}%"
    return f"{d:+.1f}% [{ci[0]:+.1f}, {ci[1]:+.1f}]"


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
