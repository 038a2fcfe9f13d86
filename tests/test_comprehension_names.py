"""No function both calls a module-level name and uses it as a comprehension's loop variable.

Python 3.12 inlines comprehensions into their function (PEP 709); on 3.12.3 a loop variable of one comprehension that
has the name of a module-level function called elsewhere in the same function turns that call into an unbound local
(UnboundLocalError), while 3.11 runs it. Every Python the package supports must run every function."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"


def _comprehension_targets(func: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(func):
        if isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            for gen in node.generators:
                names |= {n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name)}
    return names


def _module_names(tree: ast.Module) -> set[str]:
    """Names bound at module level: imports, functions, classes, assignments."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def clashes(source: str) -> list[str]:
    """`function: name` for each function whose comprehension loops over a name it also loads as a module-level one
    outside that comprehension."""
    tree = ast.parse(source)
    module = _module_names(tree)
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        targets = _comprehension_targets(func) & module
        if not targets:
            continue
        inner = set()  # the Name nodes inside comprehensions that bind the name: their own use is fine
        for node in ast.walk(func):
            if isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
                bound = {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
                inner |= {id(n) for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in bound}
        loads = {
            n.id
            for n in ast.walk(func)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and id(n) not in inner
        }
        found += [f"{func.name}: {name}" for name in sorted(targets & loads)]
    return found


def test_the_check_finds_the_clash_it_is_for():
    source = (
        "from x import column\n"
        "def f(rows, fields):\n"
        "    kept = {name: column for name, column in fields.items()}\n"
        "    return [key for row in rows if (key := column(row))]\n"
    )
    assert clashes(source) == ["f: column"]
    assert clashes(source.replace("name, column in", "name, other in").replace(": column for", ": other for")) == []


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_comprehension_shadows_a_module_name_its_function_uses(path):
    assert clashes(path.read_text(encoding="utf-8")) == []
