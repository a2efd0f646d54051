"""The fair-protocol comparison: every method at the learning rate chosen for it on the
validation split, each schedule and control against tuned standard QAT, the 2 × 2 factorial
of fractional bits and warm-up, and the verdict sentences.

The primary effect is the paired log-ratio over seeds (method / reference per seed, a t
interval on the logs, exponentiated back: :func:`fraqat.report.stats.log_ratio`); the raw
Δ% = (mean method − mean ref) / mean ref with its paired t interval stands beside it. Every
test of the table is one family: Holm-adjusted p-values decide, with one symmetric rule
(:func:`fraqat.report.stats.classify`): a method *wins* (*loses*) when both sensitive metrics
(held-out distillation loss and sample MSE to the teacher) are at least ``THRESHOLD_PCT``
better (worse) and their adjusted tests reject no change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fraqat import methods
from fraqat.report import factorial
from fraqat.report.stats import (
    THRESHOLD_PCT,
    classify,
    delta_pct,
    holm,
    log_ratio,
    paired_ttest,
    seeds_needed,
)
from fraqat.report.tables import fmt, fmt_delta, markdown_table
from fraqat.report.words import comparison_sentence, fmt_effect, read_effect

BASELINE = methods.BASELINE
SENSITIVE = {"heldout_distill_loss": "held-out loss", "teacher_mse": "teacher MSE"}
FRACTIONAL = methods.in_group("fractional")
CONTROLS = methods.in_group("control")
UNCOMPARED = (BASELINE, *methods.in_group("floor"), *methods.in_group("reference"))
WIN_PCT = THRESHOLD_PCT


def per_seed(evals: pd.DataFrame, method: str, metric: str) -> dict[int, float]:
    rows = evals[(evals["method"] == method)].dropna(subset=[metric])
    return {int(s): float(v) for s, v in zip(rows["seed"], rows[metric], strict=True)}


def versus(evals: pd.DataFrame, method: str, ref: str, metric: str) -> dict | None:
    """``method`` vs ``ref`` on ``metric``, paired over the seeds both have: the log-ratio
    ``effect`` and the raw Δ% with its paired t interval."""
    a, b = per_seed(evals, method, metric), per_seed(evals, ref, metric)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    x, y = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    test = paired_ttest(x, y)
    return {"delta_pct": delta_pct(float(x.mean()), float(y.mean())), "n": len(seeds),
            "ci_pct": test["ci_pct"] if test else None, "p": test["p"] if test else None,
            "effect": log_ratio(x, y)}


def outcome(effects: list[dict | None]) -> str:
    """The symmetric rule of :func:`fraqat.report.stats.classify`."""
    return classify(effects, WIN_PCT)


def references(method: str, control_of: str) -> list[str]:
    """qat, and the arm ``method`` mirrors: a control's ``control_of``; a fractional method
    with its own warm-up, the control with the same warm-up (the factorial's fourth arm)."""
    recipe = methods.get(method)
    if recipe.is_control:
        return [BASELINE, control_of]
    if recipe.warmup == "own-high-bits":
        return [BASELINE, *(m for m in CONTROLS if methods.get(m).warmup == "mirrored-high-bits")]
    return [BASELINE]


def comparisons(evals: pd.DataFrame, methods: list[str], control_of: str) -> list[dict]:
    """Every trained method vs tuned qat, and each control / factorial arm vs the arm it
    mirrors; Holm over every test of the table; each row's outcome from the adjusted tests."""
    rows: list[dict[str, Any]] = []
    for method in methods:
        if method in UNCOMPARED:
            continue
        for ref in references(method, control_of):
            if ref == method or ref not in methods:
                continue
            res = {m: versus(evals, method, ref, m) for m in SENSITIVE}
            rows.append({"method": method, "ref": ref, "results": res})
    effects = [r["results"][m]["effect"] for r in rows for m in SENSITIVE
               if r["results"][m] and r["results"][m]["effect"]]
    for e, p in zip(effects, holm([e["p"] for e in effects]), strict=True):
        e["p_adj"] = p
    for r in rows:
        r["outcome"] = outcome([x["effect"] if x else None for x in r["results"].values()])
    return rows


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
    head = ["method", "vs"]
    for label in SENSITIVE.values():
        head += [f"{label}: ratio (Δ% [95% CI]) over seeds", "Holm p", "raw Δ% [95% CI]"]
    head += ["seeds", f"outcome (±{WIN_PCT:g} %, both metrics)"]
    out = []
    for r in rows:
        cells = []
        for x in r["results"].values():
            e = x["effect"] if x else None
            cells += [fmt_effect(e) if e else "-",
                      fmt(e.get("p_adj"), 2) if e else "-",
                      fmt_delta(x["delta_pct"], x["ci_pct"]) if x else "-"]
        n = max((x["n"] for x in r["results"].values() if x), default=0)
        out.append([r["method"], r["ref"], *cells, str(n), r["outcome"]])
    return markdown_table(head, out)


def factorial_effects(evals: pd.DataFrame) -> dict[str, dict[str, dict | None]]:
    """{metric label: {effect: interval}} of the 2 × 2 factorial (``fraqat.report.factorial``)."""
    return {label: factorial.effects({m: per_seed(evals, m, metric)
                                      for m in factorial.ARMS.values()})
            for metric, label in SENSITIVE.items()}


def factorial_markdown(evals: pd.DataFrame) -> str:
    """Main effects and interaction per metric, or which arms are missing."""
    missing = factorial.missing_arms({m: per_seed(evals, m, "heldout_distill_loss")
                                      for m in factorial.ARMS.values()})
    if missing:
        return f"Not run: {', '.join(f'`{m}`' for m in missing)} (the factorial needs all four)."
    fx = factorial_effects(evals)
    head = ["effect", *(f"{label}: ratio (Δ% [95% CI])" for label in SENSITIVE.values())]
    rows = [[name, *(fmt_effect(fx[label][name]) for label in SENSITIVE.values())]
            for name in factorial.EFFECTS]
    return markdown_table(head, rows)


def verdict(rows: list[dict], evals: pd.DataFrame, chosen: dict, control_of: str,
            scope: str) -> str:
    """The verdict paragraph: one generated sentence per comparison (fractional schedules and
    controls vs qat, each control vs the arm it mirrors), the factorial's effects, and the
    seeds a ±4 % effect needs at the measured spread."""
    if BASELINE not in set(evals["method"]) or not rows:
        return f"**Fair-protocol verdict on {scope}: cannot be tested** (needs qat and another " \
               "trained method)."
    rates = ", ".join(f"`{m}` {v:g}" for m, v in chosen.items())
    text = [f"**Fair-protocol verdict** (each method at its tuned learning rate: {rates})."
            if rates else "**Fair-protocol verdict** (untuned learning rates)."]
    for r in rows:
        effects = {SENSITIVE[m]: (x["effect"] if x else None) for m, x in r["results"].items()}
        text.append(comparison_sentence(r["method"], r["ref"], effects, scope, WIN_PCT))
    fx = factorial_effects(evals)
    held = fx["held-out loss"]
    if all(held.values()):
        text.append(f"Factorial on {scope} (held-out loss, ratios over seeds, each effect "
                    "alone): " + "; ".join(read_effect(name, e, WIN_PCT)
                                           for name, e in held.items()) + ".")
    spreads = [x["effect"]["sd_log"] for r in rows if r["ref"] == BASELINE
               for x in r["results"].values() if x and x["effect"]]
    need = [n for s in spreads if (n := seeds_needed(s, WIN_PCT))]
    if need:
        text.append(f"Seeds a ±{WIN_PCT:g} % effect needs at the measured seed spread (paired t "
                    f"test on the log-ratios, 80 % power, α 0.05): {min(need)}–{max(need)}.")
    return " ".join(text)


def flat(rows: list[dict]) -> dict[str, float]:
    """``fair.<metric>.<method>_vs_<ref>.{delta_pct,ratio_pct,ci_low_pct,ci_high_pct,p_holm}``
    keys for ``dvc metrics``: raw Δ%, and the log-ratio effect with its Holm-adjusted p."""
    out = {}
    short = {"heldout_distill_loss": "heldout_loss", "teacher_mse": "teacher_mse"}
    for r in rows:
        for metric, res in r["results"].items():
            key = f"fair.{short[metric]}.{r['method']}_vs_{r['ref']}"
            if res and res["delta_pct"] is not None:
                out[f"{key}.delta_pct"] = float(res["delta_pct"])
            e = res["effect"] if res else None
            if e:
                out.update({f"{key}.ratio_pct": e["pct"], f"{key}.ci_low_pct": e["ci_pct"][0],
                            f"{key}.ci_high_pct": e["ci_pct"][1], f"{key}.p_holm": e["p_adj"]})
    return out
