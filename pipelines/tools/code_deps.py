"""Each DVC stage's code dependencies, computed from the package's import graph.

``python -m pipelines.tools.code_deps`` prints, per stage, the ``fraqat/`` files its command runs;
``--write`` puts them into ``dvc.yaml``; ``tests/test_imports.py`` fails when ``dvc.yaml``
lists anything else. A stage's code is everything ``fraqat/stages/<stage>.py`` imports inside
the package, transitively (function-level imports included), plus ``fraqat/__init__.py``,
the params schema that ``fraqat <stage>`` validates first and the thread pin it applies. One
file missing means ``dvc repro`` calls stale results up to date; one extra re-runs a stage
for code it never runs.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fraqat"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """``fraqat.a.b`` -> ``fraqat/a/b.py`` (or its package ``__init__.py``); None outside."""
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file() and (p.parent == PACKAGE or PACKAGE in p.parents):
            return p
    return None


@cache
def imports_of(path: Path) -> frozenset[Path]:
    """The package files ``path`` imports directly, at any depth of its syntax tree.

    ``from fraqat.x import y`` names the submodule ``fraqat/x/y.py`` when there is one, else
    ``fraqat/x``; the parent packages' ``__init__`` files that Python runs on the way are
    added by :func:`closure`, not counted as edges (they would make every re-export a circle).
    """
    out: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [n for n in subs if module_file(n)] or [node.module]
        else:
            continue
        out.update(f for n in names if (f := module_file(n)) is not None)
    return frozenset(out - {path})


def parents(path: Path) -> set[Path]:
    """The ``__init__.py`` of every package above ``path`` inside ``fraqat/``."""
    return {d / "__init__.py" for d in path.parents if d == PACKAGE or PACKAGE in d.parents}


def closure(start: Path) -> set[Path]:
    """Every package file that importing ``start`` runs."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo.extend(imports_of(f) | parents(f))
    return seen


def distributed(path: Path) -> bool:
    """The stage module sets ``DISTRIBUTED = True``: the CLI may restart it under torchrun."""
    return any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "DISTRIBUTED"
                                                 for t in n.targets)
               and getattr(n.value, "value", False) is True
               for n in ast.parse(path.read_text()).body)


def stage_code(stage: dict) -> set[str]:
    sub = stage["cmd"].split()[1]
    module = PACKAGE / "stages" / f"{sub}.py"
    files = (closure(module) | closure(PACKAGE / "params.py")
             | closure(PACKAGE / "threads.py"))  # the CLI pins every stage's threads
    if distributed(module):
        files |= closure(PACKAGE / "train" / "launch.py")
    return {str(f.relative_to(ROOT)) for f in files}


def find_cycle() -> list[Path] | None:
    graph = {p: imports_of(p) for p in PACKAGE.rglob("*.py")}
    state: dict[Path, int] = {}  # 1: on the stack, 2: done

    def visit(p: Path, stack: list[Path]) -> list[Path] | None:
        state[p] = 1
        for q in sorted(graph.get(p, ())):
            if state.get(q) == 1:
                return stack[stack.index(q):] + [q]
            if q not in state and (found := visit(q, [*stack, q])):
                return found
        state[p] = 2
        return None

    for p in sorted(graph):
        if p not in state and (found := visit(p, [p])):
            return found
    return None




def rewrite(text: str) -> str:
    """``dvc.yaml``'s text with each stage's ``fraqat/`` deps replaced by its closure.

    Line-based so comments and layout survive; deps come out as a block list, data first.
    """
    lines, out, i, stage = text.splitlines(), [], 0, None
    while i < len(lines):
        line = lines[i]
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            stage = line.strip()[:-1]
        if stage in STAGES and line.startswith("    deps:"):
            rest, i = line.split(":", 1)[1].strip(), i + 1
            while rest.startswith("[") and not rest.endswith("]"):
                rest, i = rest + " " + lines[i].strip(), i + 1
            items = [x.strip() for x in rest.strip("[]").split(",") if x.strip()]
            while i < len(lines) and lines[i].startswith("      - "):
                items.append(lines[i].strip()[2:])
                i += 1
            data = [x for x in items if not x.startswith("fraqat/")]
            out.append("    deps:")
            out += [f"      - {x}" for x in [*data, *sorted(stage_code(STAGES[stage]))]]
            continue
        out.append(line)
        i += 1
    return "\n".join(out) + "\n"


def main() -> None:
    """Print each stage's code deps; with ``--write``, put them into ``dvc.yaml``."""
    import sys

    if "--write" in sys.argv[1:]:
        path = ROOT / "dvc.yaml"
        path.write_text(rewrite(path.read_text()))
        return
    for name, stage in STAGES.items():
        print(f"{name}: {' '.join(sorted(stage_code(stage)))}")


if __name__ == "__main__":
    main()
