"""Report files of a DVC experiment that ``dvc exp show`` does not carry.

``dvc exp show`` lists only the headline metrics (``reports/metrics.json``); every other
report (``reports/details.json``, ``reports/teacher.json``, the per-run JSONs) is a plain
git-tracked output, so it sits in the experiment's commit and is read from there.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def _git(*args: str, repo: Path | None = None) -> str | None:
    out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=repo)
    return out.stdout if out.returncode == 0 else None


def read_at(rev: str, path: str, repo: Path | None = None) -> dict:
    """``path``'s JSON in commit ``rev`` of ``repo`` (default: the current folder); empty when
    the commit or the file is missing."""
    text = _git("show", f"{rev}:{path}", repo=repo) if rev else None
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}


def metrics_at(rev: str, *folders: str, files: tuple[str, ...] = (),
               repo: Path | None = None) -> dict[str, dict]:
    """``{path: {"data": json}}`` (the layout of ``dvc exp show --json``'s metrics) for every
    JSON under ``folders`` and each of ``files`` in commit ``rev``."""
    listed = _git("ls-tree", "-r", "--name-only", rev, *folders, repo=repo) \
        if rev and folders else ""
    paths = [p for p in (listed or "").split() if p.endswith(".json")] + list(files)
    return {p: {"data": data} for p in paths if (data := read_at(rev, p, repo))}
