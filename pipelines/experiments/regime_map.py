"""The regime map: per machine and cell, the factorial's arms against standard QAT at the
same learning rate, the factorial's effects, the spikes apart, and findings generated from
those numbers, scoped to the teachers measured and no stronger than their intervals.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

from fraqat import paths
from fraqat.report import factorial
from fraqat.report.fair import FRACTIONAL, WIN_PCT
from fraqat.report.stats import classify, seeds_needed, side
from fraqat.report.tables import fmt, markdown_table
from fraqat.report.words import READING, fmt_effect

VS_QAT = ("fraqat-late", "qat-warmup", "fraqat-late-warmup")
SPIKE_METHODS = ("qat", "qat-warmup", "fraqat-late")
IMAGES = {"digits": "8×8 digits", "mnist": "28×28 digits"}
Machines = dict[str, tuple[pd.DataFrame, pd.DataFrame | None]]


def cell_factorial(runs: pd.DataFrame | None, cell: str) -> dict[str, dict | None] | None:
    """The factorial's effects on the held-out loss of ``cell`` from its per-seed runs; None
    when the per-seed values or an arm are missing."""
    if runs is None or runs.empty:
        return None
    g = runs[runs["cell"] == cell]
    values = {m: dict(zip(g[g["method"] == m]["seed"].astype(int),
                          g[g["method"] == m]["train.final_target_loss"].astype(float),
                          strict=True)) for m in factorial.ARMS.values()}
    return None if factorial.missing_arms(values) else factorial.effects(values)


def seeds_of(by: dict[str, dict]) -> tuple[int, int]:
    """The fewest and most seeds among a cell's arms: a cell is used by a verdict only
    where a comparison has >= 5 seeds, so the map shows the range, not qat's count."""
    n = [int(r["seeds"]) for r in by.values()]
    return min(n), max(n)


def _vs(row: dict | None) -> str:
    if row is None:
        return "not run"
    e = row["effect_heldout"]
    return f"{fmt_effect(e) if e else '-'} {row['outcome']}"


def _spikes(by: dict[str, dict]) -> str:
    def one(r: dict | None) -> str:
        if r is None:
            return "-"
        steady = r.get("steady_spike")
        if steady is None or pd.isna(steady):
            return f"{r['max_spike']:.0f}×"
        return f"{r['first_update_spike']:.0f}×→{steady:.0f}×"
    return " / ".join(one(by.get(m)) for m in SPIKE_METHODS)


def scope(machines: Machines, gpu: dict | None, cpu_params_m: float | None,
          used_only: bool = True, method: str | None = None) -> str:
    """``teachers of 0.19–10.7 M parameters on 8×8 / 28×28 digits`` for the machines whose
    cells a verdict uses (``used_only``; of ``method`` vs qat where given) or all."""
    sizes, images = [], []
    for machine, (table, _) in machines.items():
        arm = table["method"] == method if method else table["method"] != "qat"
        used = set(table.loc[(table["seeds"] >= 5) & arm, "cell"]) if used_only \
            else set(table["cell"])
        if not used:
            continue  # a verdict uses a comparison with >= 5 paired seeds, not qat alone
        if machine == "CPU" and cpu_params_m:
            sizes.append(cpu_params_m)
            images.append(IMAGES["digits"])
        if machine == "GPU" and gpu:
            sizes += [t["num_params"] / 1e6 for t in gpu.get("teachers", {}).values()
                      if not used_only or "cells" not in t or used & set(t["cells"])]
            images.append(IMAGES.get(gpu.get("profile", {}).get("data", {}).get("source"),
                                     "images"))
    if not sizes:
        return "the teachers measured"
    lo, hi = min(sizes), max(sizes)
    size = f"a {lo:.2g} M-parameter teacher" if lo == hi else \
        f"teachers of {lo:.2g}–{hi:.3g} M parameters"
    return f"{size} on {' / '.join(dict.fromkeys(images))}"


def outcome_counts(rows: list[tuple[str, str, dict]], method: str, where: str) -> str:
    """One finding: ``method`` vs qat over the cells a verdict uses."""
    used = [(cell, machine, r["outcome"]) for cell, machine, by in rows
            if (r := by.get(method)) and not r["outcome"].startswith(("not used", "-"))]
    if not used:
        return (f"- `{method}` vs `qat`: no cell with ≥ 5 seeds ran it (no verdict).")
    machines = list(dict.fromkeys(m for _, m, _ in used))
    counts: dict[str, list[str]] = {}
    for cell, machine, label in used:
        counts.setdefault(label, []).append(f"`{cell}`" + (f" ({machine})" if len(machines) > 1
                                                           else ""))
    order = ("wins", "loses", "ties", "mixed", "unresolved")
    parts = [f"{label} in {len(cells)} ({', '.join(cells)})" for label, cells in
             sorted(counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9)]
    return (f"- On {where}, `{method}` vs `qat` at the same learning rate (held-out loss, "
            f"{len(used)} cells with ≥ 5 seeds, Holm "
            f"{'within each machine' if len(machines) > 1 else 'across them'}): "
            f"{'; '.join(parts)}.")


CAP = 1000  # seeds_needed's default search limit


def seeds_reading(rows: list[tuple[str, str, dict]]) -> str:
    """How many seeds a ±4 % effect needs at each comparison's measured spread."""
    parts = []
    for method in VS_QAT:
        need = sorted(n for _, _, by in rows if (r := by.get(method)) and r["effect_heldout"]
                      and (n := seeds_needed(r["effect_heldout"].get("sd_log"), WIN_PCT)))
        show = [str(n) if n <= CAP else f"> {CAP}" for n in need]
        if need:
            parts.append(f"`{method}` vs `qat` {show[len(need) // 2]} (median over "
                         f"{len(need)} cells, {show[0]} to {show[-1]})")
    return ("- Seeds a ±4 % effect needs at the measured seed spread (paired t test on the "
            "log-ratios, 80 % power, α 0.05; from the raw spread for † cells): "
            + ("; ".join(parts) if parts else "no spread measured") + ".")


CONTROL = {"fraqat-late": "qat-warmup", "fraqat-late-warmup": "qat-warmup"}  # warm-up arm


def warmup_reading(rows: list[tuple[str, str, dict]], facts: dict[str, dict | None]) -> str:
    """Where a fractional arm wins against ``qat``: how ``qat-warmup`` compares, and whether
    the factorial separates fractional bits from the warm-up in that cell."""
    out = []
    for cell, machine, by in rows:
        for method, control in CONTROL.items():
            f, w = by.get(method), by.get(control)
            if not f or f["outcome"] != "wins" or not w or not w["effect_heldout"]:
                continue
            fe, we = f["effect_heldout"], w["effect_heldout"]
            apart = we["ci"][1] < fe["ci"][0] or fe["ci"][1] < we["ci"][0]
            fx = facts.get(f"{machine}/{cell}")
            bits_fx = fx["fractional bits"] if fx else None
            bits = (f"the fractional-bits effect at equal warm-up is {fmt_effect(bits_fx)} "
                    f"({READING[side(bits_fx, WIN_PCT)]})" if bits_fx else
                    "whether fractional bits add anything at equal warm-up is not measured "
                    "(`fraqat-late-warmup` not run in this cell)")
            out.append(f"`{cell}` ({machine}): `{method}` {fmt_effect(fe)} and `{control}` "
                       f"{fmt_effect(we)} against `qat` (the intervals "
                       f"{'do not overlap' if apart else 'overlap'}); {bits}")
    if not out:
        return "- No fractional arm wins in a cell a verdict uses."
    return "- Where a fractional arm wins against `qat`: " + "; ".join(out) + "."


def stability_reading(rows: list[tuple[str, str, dict]], gpu: dict | None) -> str:
    split = [by["fraqat-late"] for _, _, by in rows if "fraqat-late" in by
             and not pd.isna(by["fraqat-late"].get("steady_spike", float("nan")))]
    spikier = sum(by["fraqat-late"]["max_spike"] > by["qat"]["max_spike"]
                  for _, _, by in rows if "fraqat-late" in by and "qat" in by)
    cells = sum("fraqat-late" in by and "qat" in by for _, _, by in rows)
    steps = [r["max_spike_step"] for r in (gpu or {}).get("runs", [])
             if r.get("status") == "ok" and r["method"] == "fraqat-late"]
    text = (f"- Spikes (the paper's stability argument): `fraqat-late`'s largest spike is "
            f"above `qat`'s in {spikier} of {cells} cells")
    if steps:
        first = sum(s <= 1 for s in steps)
        text += (f"; in {first} of its {len(steps)} GPU runs that spike is the first update "
                 "(step ≤ 1), a full-rate step on the near-lossless 8-bit start, not a later "
                 "instability")
    if len(split) < cells:
        text += (f". {cells - len(split)} of the {cells} cells were collected before the "
                 "spikes were split (first update / stage starts / steady, "
                 "`fraqat/train/stability.py`), so their steady spikes are not known")
    return text + "."


def fair_promotion(fair: dict | None) -> str:
    """Which fractional schedules the fair default table (``reports/metrics.json``'s
    ``fair.*`` keys) finds ≥ 4 % better than tuned QAT on both sensitive metrics, by the
    same rule as the table (log-ratio interval, Holm)."""
    if not fair:
        return "The fair default table (`dvc repro`) has not been run."
    key = "fair.{}.{}_vs_qat.{}"
    metrics = ("heldout_loss", "teacher_mse")
    tested = [m for m in FRACTIONAL if key.format("heldout_loss", m, "delta_pct") in fair]
    if not any(key.format("heldout_loss", m, "ratio_pct") in fair for m in tested):
        return ("The fair default table's metrics predate the log-ratio statistics "
                "(`dvc repro` writes them), so no promotion is read from them here.")

    def effect(m: str, k: str) -> dict | None:
        if key.format(k, m, "ratio_pct") not in fair:
            return None
        return {"pct": fair[key.format(k, m, "ratio_pct")],
                "ci_pct": [fair[key.format(k, m, "ci_low_pct")],
                           fair[key.format(k, m, "ci_high_pct")]],
                "p": fair[key.format(k, m, "p_holm")]}
    wins = [m for m in tested if classify([effect(m, k) for k in metrics], WIN_PCT) == "wins"]
    return ("In the fair default table (`reports/comparison.md`) " +
            (f"{', '.join(f'`{m}`' for m in wins)} beat tuned QAT by ≥ {WIN_PCT:g} % on both"
             if wins else f"no fractional schedule ({', '.join(f'`{m}`' for m in tested)}) "
             f"beats tuned QAT by ≥ {WIN_PCT:g} % on both with Holm p < 0.05, so none is "
             "promoted") + ".")


def regime_map(machines: Machines, gpu: dict | None = None, fair: dict | None = None,
               cpu_params_m: float | None = None) -> str:
    """``## Regime map``: the table and the findings computed from it."""
    head = ["machine", "cell", "seeds", "teacher abs-max/std",
            *(f"`{m}` vs `qat`" for m in VS_QAT),
            "factorial: fractional bits / warm-up / interaction",
            "largest spike (qat / warm-up / fraqat-late; first update→steady)",
            "diverged (qat / warm-up / fraqat-late)"]
    rows, lines, facts, damage = [], [], {}, []
    for machine, (table, runs) in machines.items():
        for cell in dict.fromkeys(table["cell"]):
            by = {r["method"]: r for r in table[table["cell"] == cell].to_dict("records")}
            if "qat" not in by:
                continue
            fx = facts[f"{machine}/{cell}"] = cell_factorial(runs, cell)
            rows.append((cell, machine, by))
            fx_text = " / ".join(fmt_effect(e) for e in fx.values()) if fx else "not run"
            lo, hi = seeds_of(by)
            lines.append([machine, cell, str(lo) if lo == hi else f"{lo}–{hi}",
                          fmt(by["qat"]["teacher_absmax_over_std"], 1),
                          *(_vs(by.get(m)) for m in VS_QAT), fx_text, _spikes(by),
                          " / ".join(f"{by[m]['divergence_rate']:.0%}" if m in by else "-"
                                     for m in SPIKE_METHODS)])
            base = {r["method"]: r for r in table[table["cell"] == cell.replace(
                "-outliers", "")].to_dict("records")}
            if "-outliers" in cell and base:
                damage.append(f"`{cell}` ({machine}): " + ", ".join(
                    f"{m} ×{by[m]['heldout_loss'] / base[m]['heldout_loss']:.1f}"
                    for m in SPIKE_METHODS if m in by and m in base))
    if not rows:
        return ""
    few = [f"`{c}` ({m})" for c, m, by in rows if seeds_of(by)[0] < 5]
    no_arm = [f"`{c}` ({m})" for c, m, by in rows if "fraqat-late-warmup" not in by]
    findings = [
        *(outcome_counts(rows, m, scope(machines, gpu, cpu_params_m, method=m))
          for m in VS_QAT),
        seeds_reading(rows),
        warmup_reading(rows, facts),
        stability_reading(rows, gpu),
        "- Outlier damage (held-out loss with outliers / without, same cell otherwise): "
        + ("; ".join(damage) if damage else "no paired cells") + ".",
        *([f"- Not used by any verdict (an arm with fewer than 5 seeds): {', '.join(few)}."]
          if few else []),
        *([f"- Not run: `fraqat-late-warmup` in {len(no_arm)} of {len(rows)} cells "
           f"({', '.join(no_arm)}); there the factorial's effects are not measured."]
          if no_arm else []),
        "- Promotion to a named schedule needs ≥ 4 % on both sensitive metrics against "
        "*tuned* QAT; these cells hold the rate fixed and measure the held-out loss only. "
        + fair_promotion(fair)]
    return "\n".join(["## Regime map", "", markdown_table(head, lines), "", *findings, ""])


def cpu_source(cpu: dict | None, cells: list[str], known: Iterable[str]) -> str:
    """Which machine and path produced which CPU cells: DVC experiments, or (its cells)
    ``regime_device``'s CPU half, with its run of the default table's recipe beside the
    committed ``dvc repro`` one where it made that run."""
    dvc = "DVC experiments (`python -m pipelines.experiments.regime queue`) on the 2-core CPU"
    mine = [c for c in (cpu or {}).get("cell_order", []) if c in set(known)]
    if not mine:
        return dvc
    text = (f"{', '.join(f'`{c}`' for c in mine)}: `python -m pipelines.experiments."
            f"regime_device` ({cpu.get('device', '?')}, torch {cpu.get('torch', '?')}, "
            f"{cpu.get('started', '?')}; one torch thread per run): the pipeline's own stages "
            "without DVC, with the DVC experiments' params, per-seed values kept")
    rest = [c for c in cells if c not in mine]
    if rest:
        text += f"; the other {len(rest)} cells: {dvc} (per-seed values not kept)"
    check = [r for r in cpu.get("runs", []) if r["cell"] in CHECK_CELL and r["status"] == "ok"]
    ref = paths.train_metrics("qat", 0)
    if check and ref.exists():
        run = check[0]["final_target_loss"]
        dvc_loss = json.loads(ref.read_text())["final_target_loss"]
        text += (f"; the default table's `qat` seed 0 run this way gives held-out loss "
                 f"{run:.7g}, its `dvc repro` run {dvc_loss:.7g}")
    return text


CHECK_CELL = ("check-default-qat",)
