"""The package's shape: one sub-package per pipeline stage, each importing only the stages below
it (counting imports inside functions too), no cycles, small modules, and the README's layout
section generated from the packages' own docstrings.

Run ``python tests/test_layers.py`` to rewrite the README's layout section after changing a
package docstring."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "tmcli"
README = ROOT.parent / "README.md"

# Each stage, in pipeline order, and the stages it may import. `tmcli` itself (for __version__)
# and `errors` are open to all; nothing imports `cli`.
STAGES = {
    "sources": set(),
    "io": set(),
    "measure": {"sources", "io"},
    "aggregate": {"sources", "io", "measure"},
    "generation": {"sources", "io", "measure"},
    "scoring": {"sources", "io", "measure", "generation"},
    "present": {"sources", "io", "measure", "aggregate"},
    "gates": {"sources", "io", "measure", "aggregate", "present"},
    "cli": {"sources", "io", "measure", "aggregate", "generation", "scoring", "present", "gates"},
}
TOP_LEVEL = {"__init__.py", "__main__.py", "errors.py"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("tmcli",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the tmcli modules it imports (``from tmcli.x import y`` counts x, and x.y when
    that is a module)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in found if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tmcli"


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        here = stage(module)
        for target in sorted(targets):
            there = stage(target)
            if there in (here, "tmcli", "errors") or module == "tmcli.__main__":
                continue
            if here not in STAGES or there not in STAGES[here]:
                bad.append(f"{module} imports {target}")
    return bad


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    # engines.transformers imports the constrain oracle inside a method only
    assert "tmcli.generation.constrain" in graph["tmcli.generation.engines.transformers"]
    assert "tmcli.aggregate.analysis" in graph["tmcli.aggregate.stored"]


def test_the_layer_check_finds_an_upward_import():
    assert layer_violations({"tmcli.io.x": {"tmcli.measure.y"}}) == \
        ["tmcli.io.x imports tmcli.measure.y"]
    assert layer_violations({"tmcli.present.x": {"tmcli.generation.y"}}) == \
        ["tmcli.present.x imports tmcli.generation.y"]
    assert layer_violations({"tmcli.gates.x": {"tmcli.cli.y"}}) == ["tmcli.gates.x imports tmcli.cli.y"]
    assert layer_violations({"tmcli.cli.x": {"tmcli.measure.y", "tmcli.errors"}}) == []


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_each_stage_imports_only_the_stages_below_it():
    assert layer_violations(import_graph()) == []


def test_one_package_per_stage_and_small_modules():
    assert {p.name for p in ROOT.glob("*.py")} == TOP_LEVEL
    assert {p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(STAGES)
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: split them where their jobs part"
    for path in ROOT.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), \
            f"{path.relative_to(ROOT)} says nothing of what its package owns"


def layout_section() -> str:
    """The README's code layout: each stage's package docstring, in pipeline order."""
    rows = ["| package | what it owns |", "|---|---|"]
    for name in STAGES:
        doc = ast.get_docstring(ast.parse((ROOT / name / "__init__.py").read_text()))
        text = " ".join(doc.split("\n\n")[0].split())
        rows.append(f"| `{name}/` | {text} |")
    return "\n".join(rows)


START, END = "<!-- layout: generated by tests/test_layers.py -->", "<!-- /layout -->"


def test_the_readme_layout_is_the_package_docstrings():
    text = README.read_text(encoding="utf-8")
    found = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    assert found, "README.md lacks the generated layout section"
    assert found.group(1) == layout_section(), "run: python tests/test_layers.py"


if __name__ == "__main__":
    text = README.read_text(encoding="utf-8")
    new = re.sub(re.escape(START) + r"\n(?:.*?\n)?" + re.escape(END),
                 lambda _m: f"{START}\n{layout_section()}\n{END}", text, flags=re.S)
    README.write_text(new, encoding="utf-8")
    sys.exit(0 if new != text else print("README.md unchanged") or 0)
