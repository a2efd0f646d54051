"""The fair-protocol comparison: every method at the learning rate chosen for it on the
validation split, each schedule and control against tuned standard QAT, and the verdict.

A schedule *wins* when it beats tuned QAT by at least ``WIN_PCT`` (the low end of the paper's
4-7 % claim) on both sensitive metrics (held-out distillation loss and sample MSE to the
teacher), *loses* when it is at least ``WIN_PCT`` worse on one and not that much better on the
other, and *ties* otherwise. Δ% = (method − qat) / qat, mean over seeds; the interval is the
paired t-test's over seeds (:func:`fraqat.report.stats.paired_ttest`). A win or loss whose deciding
intervals include no change is marked ``(n.s.)``: with two seeds a 4 % mean difference is
often seed noise, and the verdict says so instead of counting it.
"""

from __future__ import annotations

import pandas as pd

from fraqat import methods
from fraqat.report.stats import delta_pct, paired_ttest
from fraqat.report.tables import fmt, fmt_delta, markdown_table

BASELINE = methods.BASELINE
SENSITIVE = {"heldout_distill_loss": "held-out loss", "teacher_mse": "teacher MSE"}
FRACTIONAL = methods.in_group("fractional")
CONTROLS = methods.in_group("control")
UNCOMPARED = (BASELINE, *methods.in_group("floor"), *methods.in_group("reference"))
WIN_PCT = 4.0


def versus(evals: pd.DataFrame, method: str, ref: str, metric: str) -> dict | None:
    """``method`` vs ``ref`` on ``metric``, paired over the seeds both have."""
    pivot = evals[evals["method"].isin([method, ref])].pivot_table(
        index="seed", columns="method", values=metric, aggfunc="first")
    if method not in pivot or ref not in pivot or pivot.dropna().empty:
        return None
    pivot = pivot.dropna()
    a, b = pivot[method].to_numpy(float), pivot[ref].to_numpy(float)
    test = paired_ttest(a, b)
    return {"delta_pct": delta_pct(a.mean(), b.mean()), "n": len(a),
            "ci_pct": test["ci_pct"] if test else None, "p": test["p"] if test else None}


def outcome(deltas: list[float | None]) -> str:
    """wins / ties / loses against the reference (module docstring); '-' if a metric is missing."""
    known = [d for d in deltas if d is not None]
    if len(known) < len(deltas):
        return "-"
    if all(d <= -WIN_PCT for d in known):
        return "wins"
    if any(d >= WIN_PCT for d in known) and not any(d <= -WIN_PCT for d in known):
        return "loses"
    return "ties"


def comparisons(evals: pd.DataFrame, methods: list[str], control_of: str) -> list[dict]:
    """Every trained method vs tuned qat; the controls also vs their fractional source."""
    rows = []
    for method in methods:
        if method in UNCOMPARED:
            continue
        for ref in [BASELINE] + ([control_of] if method in CONTROLS else []):
            res = {m: versus(evals, method, ref, m) for m in SENSITIVE}
            deltas = [r["delta_pct"] if r else None for r in res.values()]
            label = outcome(deltas)
            if label in ("wins", "loses") and not confirmed(label, list(res.values())):
                label += " (n.s.)"
            rows.append({"method": method, "ref": ref, "results": res, "outcome": label})
    return rows


def confirmed(label: str, results: list[dict | None]) -> bool:
    """Does the paired 95 % interval exclude no change where the outcome is decided? A win
    needs every metric's interval below 0; a loss needs one ≥ 4 % metric's above 0."""
    def side(r: dict | None) -> float:  # +1 above 0, -1 below, 0 spanning or unknown
        ci = r and r.get("ci_pct")
        return 0.0 if not ci else 1.0 if ci[0] > 0 else -1.0 if ci[1] < 0 else 0.0
    if label == "wins":
        return all(side(r) < 0 for r in results)
    return any(r and r["delta_pct"] >= WIN_PCT and side(r) > 0 for r in results)


def tune_markdown(tune: dict) -> str:
    """Validation loss of every (method, lr) of the grid, and the lr chosen ("edge" when it is
    the grid's smallest or largest value: the optimum may lie outside the grid)."""
    values = tune.get("grid", [])
    grid = [f"{lr:g}" for lr in values]
    head = ["method", *(f"lr {g}" for g in grid), "chosen lr"]
    edges = {min(values), max(values)} if len(values) > 1 else set()
    rows = [[m, *(fmt(tune["losses"].get(m, {}).get(g), 4) for g in grid),
             f"{lr:g}{' (edge)' if lr in edges else ''}"]
            for m, lr in tune.get("chosen", {}).items()]
    return markdown_table(head, rows)


def comparisons_markdown(rows: list[dict]) -> str:
    head = ["method", "vs", *(f"Δ% {label} [95% CI]" for label in SENSITIVE.values()),
            "seeds", f"outcome (±{WIN_PCT:g} % on both)"]
    out = []
    for r in rows:
        res = list(r["results"].values())
        n = max((x["n"] for x in res if x), default=0)
        out.append([r["method"], r["ref"], *(fmt_delta(x["delta_pct"], x["ci_pct"]) if x
                                             else "-" for x in res), str(n), r["outcome"]])
    return markdown_table(head, out)


def _pair(row: dict) -> str:
    return " and ".join(f"{label} {fmt_delta(row['results'][m]['delta_pct'])}"
                        for m, label in SENSITIVE.items() if row["results"][m])


def verdict(rows: list[dict], evals: pd.DataFrame, chosen: dict, control_of: str,
            setting: str) -> str:
    """The one-paragraph verdict, generated from the comparisons."""
    vs_qat = {r["method"]: r for r in rows if r["ref"] == BASELINE}
    fractional = [m for m in FRACTIONAL if m in vs_qat and vs_qat[m]["outcome"] != "-"]
    if BASELINE not in set(evals["method"]) or not fractional:
        return "**Fair-protocol verdict: cannot be tested** (needs qat and a fractional method)."
    loss = evals.groupby("method")["heldout_distill_loss"].mean()
    best = min(fractional, key=lambda m: loss[m])
    label = vs_qat[best]["outcome"]
    word = {"wins": "beats", "ties": "ties with", "loses": "loses to"}[label.split(" ")[0]]
    if label.endswith("(n.s.)"):
        word += " (on the means; the 95 % interval over seeds includes no change)"
    lr = {m: f"lr {chosen[m]:g}" for m in chosen}
    text = [f"**Fair-protocol verdict ({setting}): the best fractional schedule, `{best}` "
            f"({lr.get(best, 'untuned')}), {word} tuned standard QAT ({lr.get(BASELINE, '')})**"
            f" — {_pair(vs_qat[best])} vs `qat`."]
    for m in fractional:
        if m != best:
            text.append(f"`{m}` ({lr.get(m, 'untuned')}): {_pair(vs_qat[m])} "
                        f"({vs_qat[m]['outcome']}).")
    wins = [m for m in fractional if vs_qat[m]["outcome"] == "wins"]
    text.append(f"{'Schedules' if len(wins) != 1 else 'Schedule'} beating tuned QAT by "
                f"≥ {WIN_PCT:g} % on both sensitive metrics: "
                f"{', '.join(f'`{m}`' for m in wins) if wins else 'none'}.")
    for r in rows:
        if r["method"] in CONTROLS and r["ref"] == control_of and r["outcome"] != "-":
            what = ("the implicit-warm-up control (QAT with a warm-up as long as "
                    f"`{control_of}`'s high-bit stages)"
                    if methods.get(r["method"]).warmup == "mirrored-high-bits" else
                    f"the target-steps control (QAT on `{control_of}`'s target-bit steps "
                    "only, with the same learning-rate values)")
            base, ns = r["outcome"].split(" ")[0], r["outcome"].endswith("(n.s.)")
            text.append(f"`{r['method']}`, {what}, vs `{control_of}`: {_pair(r)} "
                        f"({ {'loses': 'worse than it', 'wins': 'better than it'}.get(base, base)}"
                        f"{', not confirmed by the interval' if ns else ''}).")
    n = min((x["n"] for r in rows for x in r["results"].values() if x), default=0)
    text.append(f"Outcomes use the means over {n} seed(s), marked (n.s.) where the 95 % "
                "interval over seeds includes no change" + (
                    "; with this few seeds the intervals are wide." if n < 5 else "."))
    return " ".join(text)


def flat(rows: list[dict]) -> dict[str, float]:
    """``fair.<metric>.<method>_vs_<ref>.delta_pct`` keys for ``dvc metrics``."""
    out = {}
    short = {"heldout_distill_loss": "heldout_loss", "teacher_mse": "teacher_mse"}
    for r in rows:
        for metric, res in r["results"].items():
            if res and res["delta_pct"] is not None:
                out[f"fair.{short[metric]}.{r['method']}_vs_{r['ref']}.delta_pct"] = \
                    float(res["delta_pct"])
    return out
