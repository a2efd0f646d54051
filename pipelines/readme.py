"""README blocks generated from ``reports/``: the README never holds a hand-copied number.

Each block sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in ``README.md``;
``python -m pipelines.readme`` rewrites every block from the report it quotes, and
``tests/test_readme.py`` fails when a block differs from what its report says now.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def section(markdown: str, heading: str) -> str:
    """The body of the ``## heading`` section (up to the next ``## ``), stripped."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    if m is None:
        raise ValueError(f"no section '## {heading}'")
    return m.group(1).strip()


def first_table(markdown: str) -> str:
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    lines = markdown.splitlines()
    start = lines.index(rows[0])
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start:end])


def results(root: Path) -> str:
    md = (root / "reports/comparison.md").read_text()
    return "\n\n".join([first_table(md), section(md, "The paper's claim")])


def ablation(root: Path) -> str:
    return section((root / "reports/ablation/ablation.md").read_text(), "Finding")


BLOCKS: dict[str, Callable[[Path], str]] = {"results": results, "ablation": ablation}


def render(readme: str, root: Path = ROOT) -> str:
    """``readme`` with each block's body replaced by its current report text."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n)(?:.*?\n)?(<!-- {name}:end -->)", re.S)
        if not pattern.search(readme):
            raise ValueError(f"README.md has no block '{name}'")
        body = make(root)
        readme = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), readme)
    return readme


def main() -> None:
    path = ROOT / "README.md"
    path.write_text(render(path.read_text()))
    print(f"updated {path.name}: {', '.join(BLOCKS)}", file=sys.stderr)


if __name__ == "__main__":
    main()
