"""Every number in the README's generated blocks is what reports/ says now."""

from __future__ import annotations

import json

import pytest

from pipelines.tools.readme import BLOCKS, FILES, ROOT, render, section


@pytest.mark.parametrize("name", sorted(FILES))
def test_readme_blocks_match_the_reports(name):
    text = (ROOT / name).read_text()
    assert render(text, names=FILES[name]) == text, \
        "run `python -m pipelines.tools.readme` after `dvc repro`"


def test_the_readme_is_short_and_leads_with_the_scoped_finding():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 320
    first_screen = "\n".join(lines[:30])
    assert "Finding" in first_screen and "toy scale" in first_screen


def test_render_replaces_a_stale_block(tmp_path):
    (tmp_path / "reports/ablation").mkdir(parents=True)
    (tmp_path / "reports/comparison.md").write_text(
        "# t\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n## The paper's claim\n\nclaim text\n")
    (tmp_path / "reports/ablation/ablation.md").write_text("## Finding\n\n- one\n\n## Cells\n")
    (tmp_path / "reports/regime").mkdir()
    (tmp_path / "reports/regime/regime.md").write_text("# r\n\n## Regime map\n\n- map\n\n## CPU\n")
    export = {"per_tensor_semantics": {"rel_l2_error": 1e-4, "rel_l2_tolerance": 0.01,
                                       "end_to_end_rel_l2_error": 2e-3,
                                       "layer_input_rel_l2_error": 0.07},
              "weights": {"code_mismatches": 0, "codes": 10}, "sizes": {"fp32_bytes": 2**20,
                                                                        "packed_bytes": 2**17}}
    (tmp_path / "reports/export.json").write_text(json.dumps(export))
    (tmp_path / "benchmarks/results").mkdir(parents=True)
    (tmp_path / "benchmarks/results/export-sana-600m-cpu.json").write_text(
        json.dumps({"verify": export, "sizes": export["sizes"]}))
    stale = ("x\n<!-- finding:start -->\nold\n<!-- finding:end -->\n"
             "<!-- repro:start -->\nold\n<!-- repro:end -->\n"
             "<!-- results:start -->\nold 9.99\n<!-- results:end -->\n"
             "<!-- ablation:start -->\nold\n<!-- ablation:end -->\n"
             "<!-- regime:start -->\nold\n<!-- regime:end -->\n"
             "<!-- export:start -->\nold\n<!-- export:end -->\n"
             "<!-- needs:start -->\nold\n<!-- needs:end -->\n"
             "<!-- layout:start -->\nold\n<!-- layout:end -->\n"
             "<!-- paper:start -->\nold\n<!-- paper:end -->\n"
             "<!-- provenance:start -->\nold\n<!-- provenance:end -->\n"
             "<!-- gpu:start -->\nold\n<!-- gpu:end -->\n")
    out = render(stale, tmp_path)
    assert "No trainer-step benchmark has timed every variant" in out
    assert "Pending the GPU run" in out  # no pipeline-stages JSON in tmp_path
    assert "*Pending:* `profiles/paper-*.yaml`" in out and "*Pending:* `profiles/prov" in out
    assert "9.99" not in out and "| 1 | 2 |\n\nclaim text" in out and "- one" in out
    assert "<!-- regime:start -->\n- map\n<!-- regime:end -->" in out
    assert "<!-- repro:start -->\nNo timed `dvc repro` is recorded yet" in out
    assert "<!-- finding:start -->\nmap\n<!-- finding:end -->" in out  # the map's first
    (tmp_path / "reports/comparison.md").write_text(
        "| a |\n|---|\n\n## The paper's claim\n\n**V** (x). On T, `fraqat-late` loses to "
        "`qat`: a. On T, `qat-warmup` beats `qat`: b.\n")
    assert "<!-- finding:start -->\nOn T, `fraqat-late` loses to `qat`: a.\n<!-- finding:end" \
        in render(stale, tmp_path)
    assert "| 1.0e-04 (≤ 0.01) | 2.0e-03 | 7.0e-02 | 0 of 10 differ | 1 → 0.125 MiB |" in out
    del export["per_tensor_semantics"]["end_to_end_rel_l2_error"]  # an older export report
    (tmp_path / "reports/export.json").write_text(json.dumps(export))
    assert "not yet reproduced with per-tensor quantizers" in render(stale, tmp_path)
    with pytest.raises(ValueError, match="no block 'finding'"):
        render("nothing here", tmp_path)


def test_gpu_block_reads_the_newest_complete_step_benchmark(tmp_path):
    def row(variant, mode, median, ratio):
        return {"variant": variant, "mode": mode, "median": median, "fastest_fp": "fp:compile",
                "x_rounds_median": ratio, "x_rounds_lo": ratio - 0.1, "x_rounds_hi": ratio + 0.1,
                "x_fp": 1.0, "x_fastest_fp_mem": 1.0, "first_step_s": 2.0}

    def write(folder, date, ratio, rows=6):
        modes = [("fp", m) for m in ("eager", "graph", "compile")] + [
            ("w4a8", m) for m in ("eager", "graph", "compile")]
        run = {"meta": {"device": "GPU", "date": date, "torch": "2"}, "rounds_done": 3,
               "steps_per_round": 4, "rows": [row(v, m, 100.0, ratio) for v, m in modes][:rows]}
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "train_step.json").write_text(json.dumps(run))

    write("benchmarks/results/a", "2026-01-01", 3.0)
    write("benchmarks/results/b", "2026-02-01", 1.5)
    write("benchmarks/results/c", "2026-03-01", 9.0, rows=4)  # newest, but not every variant
    out = BLOCKS["gpu"](tmp_path)
    assert "| eager | 100.0 | 1.50 [1.40–1.60] |" in out and "2026-02-01" in out


def test_section_stops_at_the_next_heading():
    assert section("## A\nbody\n## B\nrest", "A") == "body"


def test_the_layout_tree_names_every_module():
    from pipelines.tools.readme import layout

    tree = layout(ROOT)
    files = [*ROOT.glob("fraqat/**/*.py"), *ROOT.glob("pipelines/**/*.py"),
             *ROOT.glob("benchmarks/*.py")]
    missing = sorted(str(f.relative_to(ROOT)) for f in files
                     if f.name != "__init__.py" and f"  {f.name}" not in tree)
    assert not missing, f"the layout tree does not mention {missing}"
    assert tree.count(" ops.py ") == 1
