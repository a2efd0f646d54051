"""The import graph: no circle, stages import only the library, dvc.yaml deps are exact."""

from __future__ import annotations

import pytest

from pipelines.tools.code_deps import (
    PACKAGE,
    ROOT,
    STAGES,
    closure,
    find_cycle,
    imports_of,
    stage_code,
)


def test_the_package_has_no_import_circle():
    cycle = find_cycle()
    assert cycle is None, " -> ".join(str(p.relative_to(ROOT)) for p in cycle)


def test_stages_import_the_library_never_another_stage():
    for path in (PACKAGE / "stages").glob("*.py"):
        others = {p for p in imports_of(path) if p.parent == PACKAGE / "stages"}
        assert not others, f"{path.name} imports {sorted(p.name for p in others)}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_are_exactly_its_import_closure(name):
    listed = {d for d in STAGES[name].get("deps", []) if d.startswith("fraqat/")}
    want = stage_code(STAGES[name])
    assert listed == want, (f"dvc.yaml stage {name}: missing {sorted(want - listed)}, "
                            f"not imported {sorted(listed - want)}")


def test_the_closure_sees_nested_imports_and_the_packages_on_the_way():
    assert PACKAGE / "io.py" in imports_of(PACKAGE / "artifacts.py")
    calibrate = closure(PACKAGE / "stages" / "calibrate.py")
    assert {PACKAGE / "data.py", PACKAGE / "__init__.py", PACKAGE / "stages/__init__.py"} \
        <= calibrate
    assert PACKAGE / "export/encodings.py" in closure(PACKAGE / "export/graph.py")


def test_the_writer_leaves_a_current_dvc_yaml_unchanged():
    from pipelines.tools.code_deps import rewrite

    text = (ROOT / "dvc.yaml").read_text()
    assert rewrite(text) == text


def test_quantization_core_layers():
    """quant: the pure reference; kernels: only the core and their Triton code; ops: the one
    dispatch point."""
    quant, kernels, triton_code, ops = (PACKAGE / "quant" / f"{m}.py" for m in
                                        ("core", "kernels", "triton_kernels", "ops"))
    assert imports_of(quant) == imports_of(triton_code) == frozenset()
    assert imports_of(kernels) <= {quant, triton_code}
    assert imports_of(ops) <= {quant, kernels}
    users = {p.name for p in PACKAGE.rglob("*.py") if kernels in imports_of(p)}
    assert users <= {"ops.py"}, users
    users = {p.name for p in PACKAGE.rglob("*.py") if triton_code in imports_of(p)}
    assert users <= {"kernels.py"}, users


# Which subpackages each may import: data flows one way, quant -> models -> train -> eval ->
# report; a model kind's backend draws on all but report; stages and the CLI sit on top;
# export reads trained runs.
LAYERS = {
    "quant": {"quant"},
    "models": {"models", "quant"},
    "train": {"train", "models", "quant"},
    "eval": {"eval", "models", "quant", "train"},
    "report": {"report"},
    "export": {"export", "models", "quant", "train"},
    "backends": {"backends", "models", "quant", "train", "eval"},
}
TOP = {p.stem for p in PACKAGE.glob("*.py")}


def _area(path):
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else None


@pytest.mark.parametrize("area", sorted(LAYERS))
def test_subpackages_import_only_the_layers_below(area):
    for path in (PACKAGE / area).rglob("*.py"):
        used = {_area(p) for p in imports_of(path)} - {None}
        extra = sorted(used - LAYERS[area])
        assert not extra, f"{path.relative_to(ROOT)} imports {extra}"


def test_the_top_level_stays_small():
    assert len(TOP) <= 16, sorted(TOP)
