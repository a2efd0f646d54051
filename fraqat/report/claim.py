"""The paper's claim checked against the default table: the fraqat-vs-qat tests and the
generated claim paragraph (pure: results in, markdown out).

The paper reports FraQAT's FID 4–7 % below standard QAT's at W4A8 on DiTs of 0.6–12 B
parameters; what is measured here is a much smaller teacher, so every sentence names the
scale it was measured at and says no more than the paired log-ratio interval over seeds.
"""

from __future__ import annotations

import pandas as pd

from fraqat.report.tables import fmt
from fraqat.report.tables import markdown_table as md_table
from fraqat.report.words import claim_sentence, fmt_effect

CLAIM_RANGE = (4.0, 7.0)  # paper: FraQAT's FID 4-7 % lower than standard QAT at W4A8
PAPER_SCOPE = "diffusion transformers of 0.6–12 B parameters (W4A8)"
TESTED = {"heldout_distill_loss": "held-out distillation loss", "teacher_mse": "teacher MSE",
          "fid": "FID"}


def bootstrap_p(p: float, resamples: int, eq: bool = False) -> str:
    """A bootstrap p-value; 0 means below the resolution 1/resamples."""
    if p == 0:
        return f"< {1 / resamples:.1g}"
    return f"{'= ' if eq else ''}{p:.3g}"


def tests_markdown(results: list[dict], candidate: str = "fraqat") -> str:
    head = ["metric", "qat", candidate, f"ratio {candidate} / qat over seeds (Δ% [95% CI])",
            "raw Δ%", "raw 95% CI of Δ%", "paired t-test over seeds",
            f"bootstrap 95% CI of {candidate} − qat", "bootstrap p"]
    rows = []
    for r in results:
        seed_ci = "n/a" if r["ci_pct"] is None else \
            f"[{r['ci_pct'][0]:+.1f}%, {r['ci_pct'][1]:+.1f}%]"
        t = (f"t={r['ttest_t']:.2f}, p={r['ttest_p']:.3g} (n={len(r['seeds'])})"
             if r["ttest_p"] is not None else f"n/a (n={len(r['seeds'])} seed(s); needs ≥ 2)")
        b = r["bootstrap"]
        ci = f"[{b['ci_low']:.3g}, {b['ci_high']:.3g}]" if b else "n/a (no per-item data)"
        bp = bootstrap_p(b["p"], b["resamples"]) if b else "-"
        delta = "-" if r["delta_pct"] is None else f"{r['delta_pct']:+.1f}%"
        rows.append([TESTED[r["metric"]], fmt(r["qat"], 4), fmt(r["fraqat"], 4),
                     fmt_effect(r.get("effect")), delta, seed_ci, t, ci, bp])
    return md_table(head, rows)


def claim_paragraph(table: pd.DataFrame, results: dict[str, dict], scope: str,
                    setting: str, candidate: str = "fraqat") -> tuple[bool | None, str]:
    """(reproduced?, the paragraph): the FID claim from ``candidate``'s FID log-ratio interval
    over qat (:func:`fraqat.report.words.claim_sentence`), then the sensitive metrics'."""
    fid = results.get("fid")
    reproduced, text = claim_sentence(fid.get("effect") if fid else None, scope, CLAIM_RANGE,
                                      PAPER_SCOPE, candidate)
    lines = [text]
    if fid:
        by = table.set_index("method")
        q, f = by.loc["qat"], by.loc[candidate]
        lines.append(f"FID means: {candidate} {fmt(f.fid_mean, 2, f.fid_std)}, qat "
                     f"{fmt(q.fid_mean, 2, q.fid_std)} ({len(fid['seeds'])} seed(s)).")
    if setting != "W4A8":
        lines.append(f"The claim is stated at W4A8; this run is at {setting}, so it tests "
                     "the claim's direction, not its size.")
    for metric in ("heldout_distill_loss", "teacher_mse"):
        r = results.get(metric)
        if r and r.get("effect"):
            lines.append(f"`{candidate}` / `qat` on the sensitive {TESTED[metric]}: "
                         f"{fmt_effect(r['effect'])}.")
    return reproduced, " ".join(lines)
