"""The flow run's artifacts in the Prefect UI: progress, the comparison table and the plots.

Created from the flow itself, so they hang off the flow run (not off a task). Plots are
markdown artifacts embedding the PNG: the UI renders them as images, while an image
artifact needs a URL the browser can fetch (a local file is none) and shows a data URI as text.
"""

from __future__ import annotations

import base64
from pathlib import Path
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)

from fraqat import paths

PLOTS = {"fraqat-fid-plot": ("FID per method", paths.PLOTS / "fid.png"),
         "fraqat-training": ("Training curves, methods overlaid", paths.PLOTS / "training.png"),
         "fraqat-samples": ("Samples: one row per method", paths.PLOTS / "samples.png")}
KEYS = ("fraqat-comparison", *PLOTS)


class Progress:
    """A progress artifact: the share of stages finished, updated as each one finishes."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.id: UUID = create_progress_artifact(0.0, key="fraqat-progress",
                                                 description=f"0 of {total} stages finished")

    def step(self, stage: str, outcome: str) -> None:
        self.done += 1
        update_progress_artifact(self.id, 100.0 * self.done / max(self.total, 1),
                                 description=f"{self.done} of {self.total} stages finished "
                                             f"(last: {stage}, {outcome})")


def _image(title: str, png: Path) -> str:
    uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    return f"# {title}\n\n![{title}]({uri})\n"


def publish(root: Path, where: str, asked: str, outcomes: dict[str, str],
            smoke: bool) -> list[str]:
    """The comparison (where the run ran, what it asked, each stage's outcome and
    reports/comparison.md) and one artifact per plot; returns the keys created."""
    md = ["# FraQAT pipeline run", "", f"Ran in: {where}", "", f"Parameters: {asked}", ""]
    if smoke:
        md += ["**Smoke run: no verdict** (toy sizes: it checks the plumbing, not the method).",
               ""]
    md += ["| stage | outcome |", "|---|---|", *(f"| `{s}` | {o} |" for s, o in outcomes.items())]
    reported = "report" in outcomes  # else reports/ are an earlier run's, not this one's
    if reported and (root / paths.COMPARISON_MD).exists():
        md += ["", (root / paths.COMPARISON_MD).read_text()]
    elif not reported:
        md += ["", "The `report` stage was not part of this run: no table, no plots."]
    create_markdown_artifact(markdown="\n".join(md), key="fraqat-comparison",
                             description=f"{paths.COMPARISON_MD} and the stage outcomes")
    made = ["fraqat-comparison"]
    for key, (title, png) in PLOTS.items() if reported else ():
        if (root / png).exists():
            create_markdown_artifact(markdown=_image(title, root / png), key=key,
                                     description=f"{png} of this run")
            made.append(key)
    return made
