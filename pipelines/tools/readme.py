"""README blocks generated from ``reports/``: the README never holds a hand-copied number.

Each block sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in ``README.md``;
``python -m pipelines.tools.readme`` rewrites every block from the report it quotes, and
``tests/test_readme.py`` fails when a block differs from what its report says now.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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


def finding(root: Path) -> str:
    """The README's first-screen sentence: the default table's generated verdict on the
    factorial's fractional arm against standard QAT (``reports/comparison.md``), else the
    regime map's first finding; both scoped and interval-bounded where they are written."""
    md = (root / "reports/comparison.md").read_text()
    for sentence in re.split(r"(?<=\.) (?=On |\*\*)", md):
        if sentence.startswith("On ") and "`fraqat-late` " in sentence and "`qat`:" in sentence:
            return sentence.strip()
    regime = section((root / "reports/regime/regime.md").read_text(), "Regime map")
    bullets = [line[2:] for line in regime.splitlines() if line.startswith("- ")]
    return bullets[0] if bullets else "No finding yet: run `dvc repro`."


def ablation(root: Path) -> str:
    return section((root / "reports/ablation/ablation.md").read_text(), "Finding")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}" if n >= 100 * 2**20 else f"{n / 2**20:.3g}"


def export(root: Path) -> str:
    """The export checks of the embedded model (``reports/export.json``) and of the
    Sana-600M config (``benchmarks/results/export-sana-600m-cpu.json``), one row each."""
    rows = ["| model | per-tensor gate | end to end | views only | weight codes | FP32 → packed |",
            "|---|---|---|---|---|---|"]
    sources = [("embedded (dvc repro)", root / "reports/export.json"),
               ("Sana-600M config, random", root / "benchmarks/results/export-sana-600m-cpu.json")]
    for name, path in sources:
        r = json.loads(path.read_text())
        check = r.get("verify", r)
        sem, sizes = check["per_tensor_semantics"], r["sizes"]
        if "end_to_end_rel_l2_error" not in sem:  # written before per-tensor quantizers
            rows.append(f"| {name} | not yet reproduced with per-tensor quantizers "
                        "(`dvc repro export`) | | | | |")
            continue
        rows.append(f"| {name} | {sem['rel_l2_error']:.1e} (≤ {sem['rel_l2_tolerance']:g}) "
                    f"| {sem['end_to_end_rel_l2_error']:.1e} "
                    f"| {sem['layer_input_rel_l2_error']:.1e} "
                    f"| {check['weights']['code_mismatches']} of {check['weights']['codes']:,} "
                    f"differ | {_mib(sizes['fp32_bytes'])} → {_mib(sizes['packed_bytes'])} MiB |")
    return "\n".join(rows)


def stages_json(root: Path) -> Path | None:
    """The GPU run of ``benchmarks/pipeline_stages.py`` the README quotes (newest name last):
    a finished one (``needs`` written), not a CPU ``--tiny`` smoke run."""
    def finished_gpu_run(path: Path) -> bool:
        r = json.loads(path.read_text())
        return "needs" in r and not r["meta"].get("tiny")

    found = sorted((root / "benchmarks/results").glob("pipeline-stages-sana-600m-*.json"))
    found = [p for p in found if finished_gpu_run(p)]
    return found[-1] if found else None


def needs(root: Path, path: Path | None = None) -> str:
    """Per-model GPU memory, disk and hours for the paper-size run, from the measured
    Sana-600M stage run's projection (``benchmarks/model_needs.py``)."""
    path = path or stages_json(root)
    if path is None:
        return ("*Pending the GPU run:* `python -m benchmarks.pipeline_stages --json "
                "benchmarks/results/pipeline-stages-sana-600m-<card>.json` on one GPU, then "
                "`python -m pipelines.tools.readme`.")
    r = json.loads(path.read_text())
    m, p, ref = r["meta"], r["needs"]["paper_run"], r["needs"]["reference"]
    rows = ["| model | transformer params | tokens / sample | GPU GiB, train (of which weights, "
            "grads, AdamW) | GPU GiB, calibrate"
            " + evaluate (fp32 pipeline) | disk GB: checkpoint + calibration + teacher + runs |"
            " hours: calibrate + teacher + train + evaluate |", "|---|---|---|---|---|---|---|"]
    for x in r["needs"]["models"]:
        d, h = x["disk_gb"], x["hours"]
        rows.append(
            f"| {x['model']} | {x['transformer_params'] / 1e9:.2f} B | {x['tokens']:,} "
            f"| {x['train_gib']:.0f} ({x['train_static_gib']:.0f}) | {x['infer_gib']:.0f} "
            f"| {d['checkpoint']:.0f} + {d['calibration']:.0f} + {d['teacher']:.0f} + "
            f"{d['runs']:.0f} = **{x['disk_total_gb']:.0f}** "
            f"| {h['calibrate']:.1f} + {h['teacher']:.1f} + {h['train']:.1f} + "
            f"{h['evaluate']:.1f} = **{x['hours_total']:.1f}** |")
    run = r["run"]
    source = (f"Scaled from `{path.relative_to(root)}` ({m['device']}, {m['date']}, torch "
              f"{m['torch']}, diffusers {m['diffusers']}): the Sana-600M pipeline at "
              f"{run['resolution']} px, batch {ref['batch']}, measured "
              f"{ref['train_step_s'] * 1e3:.0f} ms per training step (mean over "
              f"{', '.join(k for k, v in run['train_steps'].items() if v > 0)}, "
              f"{max(run['train_steps'].values())} steps each, overheads included) and an "
              f"activation part of {ref['train_act_bytes'] / 2**30:.1f} GiB in training. "
              f"Assumed paper-size run (the paper's own step count and batch are not in the "
              f"project's notes): {p['steps']:,} steps of batch {p['batch']} at "
              f"{p['resolution']} px for each of {p['methods']} methods × {p['seeds']} seed, "
              f"{p['points']:,} calibration points from {p['prompts']:,} prompts, "
              f"{p['eval_images']:,} evaluation images per method and FP at the model's usual "
              f"sampling steps, one GPU. The evaluate hours are an upper bound: the measured "
              f"evaluations were 4 images of 4 steps each, pipeline loading included.")
    return "\n".join(rows) + "\n\n" + source


H200 = "1x139"  # one H200 as torch reports it: about 139 GiB


def paper_profiles(root: Path) -> list[str]:
    """The paper-* profiles in the paper models' order (``fraqat.needs.SPECS``)."""
    from fraqat import profiles
    from fraqat.needs import SPECS

    names = [x for x in profiles.names(root) if x.startswith("paper-")]
    return sorted(names, key=lambda x: list(SPECS).index(profiles.overrides(x, root)["model"]))


def _paper_params(root: Path, name: str):
    from fraqat import profiles
    from fraqat.params import load_params

    return load_params(root / "params.yaml",
                       overrides=profiles.flat(profiles.overrides(name, root)))


def paper(root: Path) -> str:
    """``fraqat plan``'s numbers for each paper profile on one H200 (inputs not checked)."""
    from fraqat import needs, plan

    acts, acts_path = needs.load_activations(root / "benchmarks/results")
    try:
        ref, ref_path = needs.load_reference(root / "benchmarks/results")
    except FileNotFoundError:
        ref_path = None
    if ref_path is None or not paper_profiles(root):
        return ("*Pending:* `profiles/paper-*.yaml` and the GPU runs of "
                "`benchmarks/pipeline_stages.py` and `benchmarks/paper_profiles.py`.")
    n, gib = plan.parse_gpus(H200)
    m = plan.Machine(n, gib, float("inf"), "one H200")
    rows = ["| profile | train GiB / GPU (layout) | calibrate, "
            "evaluate GiB | disk GB | hours: calibrate + teacher + tune + train + evaluate | "
            "on one H200 |", "|---|---|---|---|---|---|"]
    uppers: list[tuple[float, float]] = []
    for name in paper_profiles(root):
        params = _paper_params(root, name)
        p = plan.plan(params, m, prompts=1000, acts=acts, ref=ref)
        h = p.hours
        uppers.append((p.evaluate_upper_hours, p.hours["evaluate"]))
        verdict = "fits" if p.fits else "refused: " + (p.refusal or "").split("; change: ")[-1]
        rows.append(f"| `{name}` | {p.train_gib:.0f} "
                    f"({p.layout.words().removeprefix('on 1 GPU, ')}; {p.activation_source}) "
                    f"| {p.infer_gib:.0f} | {p.disk_total_gb:,.0f} | {h['calibrate']:.1f} + "
                    f"{h['teacher']:.1f} + {h['tune']:.1f} + {h['train']:.1f} + "
                    f"{h['evaluate']:.1f} = **{sum(h.values()):,.1f}** | {verdict} |")
    meta = json.loads(acts_path.read_text()) if acts_path else {}
    measured = ", ".join(needs.SPECS[k].label for k in acts)
    return "\n".join(rows) + (
        f"\n\n`fraqat plan --profile NAME --gpus {H200} --no-check-files` for each profile "
        "(1,000 prompts; no disk limit). "
        f"Training memory: each family's transformer trained at full size with random weights "
        f"(`{acts_path.relative_to(root) if acts_path else '-'}`, {meta.get('device', '-')}, "
        f"{meta.get('date', '-')}; measured: {measured}; the others scaled by tokens × depth × "
        f"width); hours and calibrate / evaluate memory from `{ref_path.relative_to(root)}`. "
        "Hours are for one GPU (under FSDP: divided by the GPUs); evaluate's from the forward "
        "share of the measured training step (the measured 4-image evaluation, pipeline "
        "loading included, would give up to "
        f"{max(u / max(e, 1e-9) for u, e in uppers):.0f}× more).")


def provenance(root: Path) -> str:
    """Each value of the paper profiles and where it comes from (profiles/provenance.json)."""
    from fraqat import profiles

    if not (root / "profiles/provenance.json").is_file():
        return "*Pending:* `profiles/provenance.json`."
    data = json.loads((root / "profiles/provenance.json").read_text())
    names = paper_profiles(root)
    rows = ["| key | " + " | ".join(x.removeprefix("paper-") for x in names)
            + " | source |", "|---" * (len(names) + 2) + "|"]
    flat = {x: profiles.flat(profiles.overrides(x, root)) for x in names}
    for key in dict.fromkeys(k for x in names for k in flat[x]):
        origins = {data["profiles"][x].get(key, data["common"].get(key)) for x in names
                   if key in flat[x]}
        vals = [f"`{json.dumps(flat[x][key])}`" if key in flat[x] else "-" for x in names]
        rows.append(f"| `{key}` | " + " | ".join(vals) + " | " + " / ".join(
            sorted(o for o in origins if o)) + " |")
    return "\n".join(rows)


LAYOUT_DIRS = ("fraqat", "pipelines", "benchmarks")


def _summary(path: Path) -> str:
    """The first sentence of a module's docstring (the layout tree's one line per file)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    sentence = re.split(r"(?<=[.])\s", first)[0].rstrip(".")
    return sentence if len(sentence) <= 76 else sentence[:75].rstrip() + "…"


def layout(root: Path) -> str:
    """The source tree, one line per module, from the modules' own docstrings."""
    lines = ["```"]
    for top in LAYOUT_DIRS:
        lines.append(f"{top}/")
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root / top)
            if "__pycache__" in rel.parts or (path.name == "__init__.py" and len(rel.parts) == 1):
                continue
            depth = len(rel.parts)
            name = f"{rel.parent.name}/" if path.name == "__init__.py" else path.name
            indent = "  " * (depth if path.name != "__init__.py" else depth - 1)
            lines.append(f"{indent}{name:<{max(24 - len(indent), len(name) + 1)}}{_summary(path)}")
    return "\n".join([*lines, "```"])


def regime(root: Path) -> str:
    return section((root / "reports/regime/regime.md").read_text(), "Regime map")


STEP_VARIANTS = {(v, m) for v in ("fp", "w4a8") for m in ("eager", "graph", "compile")}


def _step_runs(root: Path) -> dict | None:
    """The newest trainer-step benchmark JSON that timed every variant (FP and W4A8, 3 modes)."""
    best = None
    for path in sorted(root.glob("benchmarks/results/*/*train_step.json")):
        run = json.loads(path.read_text())
        timed = {(r["variant"], r["mode"]) for r in run.get("rows", [])}
        if "meta" in run and timed >= STEP_VARIANTS and run.get("rounds_done"):
            if best is None or run["meta"]["date"] > best["meta"]["date"]:
                best = run
    return best


def gpu_step(root: Path) -> str:
    run = _step_runs(root)
    if run is None:
        return "No trainer-step benchmark has timed every variant yet (`bash benchmarks/gpu.sh`)."
    rows = {(r["variant"], r["mode"]): r for r in run["rows"]}
    fast = rows[("fp", "eager")]["fastest_fp"]
    fast_ms = rows[tuple(fast.split(":"))]["median"]
    lines = ["| W4A8 mode | ms / step | × fastest FP, paired by round: median [min–max] "
             "| × FP same mode | peak memory × fastest FP |", "|---|---|---|---|---|"]
    for mode in ("eager", "graph", "compile"):
        r = rows[("w4a8", mode)]
        lines.append(f"| {mode} | {r['median']:.1f} | {r['x_rounds_median']:.2f} "
                     f"[{r['x_rounds_lo']:.2f}–{r['x_rounds_hi']:.2f}] | {r['x_fp']:.2f} "
                     f"| {r['x_fastest_fp_mem']:.2f} |")
    fp, w = rows[("fp", "compile")], rows[("w4a8", "compile")]
    meta = run["meta"]
    lines.append("")
    lines.append(f"{meta['device']}, {meta['date']}, torch {meta['torch']}: Sana-600M config, "
                 f"batch 8, {run['rounds_done']} interleaved rounds × {run['steps_per_round']} "
                 f"steps; fastest FP = `{fast}` at {fast_ms:.1f} ms. "
                 f"First compiled step {w['first_step_s']:.1f} s (W4A8) vs "
                 f"{fp['first_step_s']:.1f} s (FP).")
    return "\n".join(lines)


def repro_time(root: Path) -> str:
    """The newest ``pipelines.tools.repro --out`` JSON: how long the default takes here."""
    runs = sorted((root / "benchmarks" / "results").glob("repro-*.json"),
                  key=lambda p: json.loads(p.read_text())["started"])
    if not runs:
        return "No timed `dvc repro` is recorded yet (`python -m pipelines.tools.repro --out " \
               "benchmarks/results/repro-cpu2.json`)."
    r = json.loads(runs[-1].read_text())
    slow = sorted(r["stages"].items(), key=lambda kv: -kv[1])[:3]
    return (f"A full `dvc repro` from scratch took **{r['total_s'] / 60:.1f} min** on "
            f"{r['cores']} cores ({r['cpu']}; {r['cpu_s'] / 60:.1f} min of CPU; "
            f"{len(r['stages'])} stages, commit `{r['commit']}`, {r['started'][:10]}); the "
            f"longest: " + ", ".join(f"`{k}` {v:.0f} s" for k, v in slow) +
            f". Per stage: `{runs[-1].relative_to(root)}`.")


BLOCKS: dict[str, Callable[[Path], str]] = {"finding": finding, "results": results,
                                            "ablation": ablation,
                                            "regime": regime, "export": export, "needs": needs,
                                            "layout": layout, "paper": paper,
                                            "provenance": provenance,
                                            "gpu": gpu_step, "repro": repro_time}


# The user's README holds the headline; the research detail lives beside the reports.
FILES: dict[str, tuple[str, ...]] = {"README.md": ("finding", "repro", "results", "paper",
                                                    "export"),
                                     "docs/paper.md": ("provenance",),
                                     "docs/layout.md": ("layout",),
                                     "reports/README.md": ("repro", "ablation", "regime"),
                                     "docs/real-models.md": ("needs",),
                                     "docs/export.md": ("export",),
                                     "docs/gpu.md": ("gpu",)}


def render(readme: str, root: Path = ROOT, names: tuple[str, ...] = tuple(BLOCKS)) -> str:
    """``readme`` with each named block's body replaced by its current report text."""
    for name in names:
        pattern = re.compile(rf"(<!-- {name}:start -->\n)(?:.*?\n)?(<!-- {name}:end -->)", re.S)
        if not pattern.search(readme):
            raise ValueError(f"README.md has no block '{name}'")
        body = BLOCKS[name](root)
        readme = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), readme)
    return readme


def main() -> None:
    for name, blocks in FILES.items():
        path = ROOT / name
        path.write_text(render(path.read_text(), names=blocks))
        print(f"updated {name}: {', '.join(blocks)}", file=sys.stderr)


if __name__ == "__main__":
    main()
