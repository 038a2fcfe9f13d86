"""The import rule of docs/architecture.md ("Layers"): a module of tunelab imports only from its own layer or the
layers below it, and the import graph has no cycle.

Every module's imports are read from its source (`ast`), those inside functions included: an import deferred to call
time is still a dependency, and deferring one must not hide a cycle. The package root (`tunelab/__init__.py`, the
version and the API's names forwarded on first use) is not a layer: any module may read the version from it.
"""

import ast
from pathlib import Path

import tunelab

ROOT = Path(tunelab.__file__).parent

# Bottom to top. A package or top-level module not listed here fails the test: give it a layer (and docs a line).
LAYERS = [
    ("errors", "atomic", "config", "config_digest", "run_info", "rundir", "run_stamp", "places"),  # the foundation:
    # typed errors, atomic writes, options, run.json (its fields; its digest of config.yaml; the run directory; who the
    # run is now), where a result may be written
    ("kernels",),  # fused ops and their references
    ("quant",),  # low-bit formats: NF4 and 8-bit optimizer state, with their references and kernels
    ("data",),  # records -> examples -> token ids -> batches
    ("models", "conversion_cache"),  # loading (and the GGUF conversion cache), our decoder, its slots, checkpointing
    ("peft",),  # LoRA layers, their slot implementations, adapter files
    ("training", "tasks"),  # building the model to train, the step, the loop, checkpoints, optimizers; the objectives
    ("infer",),  # opening a run as it was trained, generation, chat
    (
        "eval",
        "export",
        "server",
        "checks",
        "federated",
    ),  # scoring, comparison, evaluation, reports; merge, GGUF; the HTTP
    # server; tunelab check; federated runs on Flower
    (
        "api",
        "api_args",
        "api_train",
        "cli",
        "cli_parser",
        "__main__",
    ),  # the Python API and the command line over it (`python -m tunelab`)
]

# Imports that break the rule and are being removed, each as (importer, imported) with a comment saying what fixes it;
# these sets only ever shrink.
KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = ("tunelab",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, source: str | None = None) -> set[str]:
    """The tunelab modules that module `name` imports (a package's __init__ standing for the package), read from its
    file or from `source`."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, or level - 1 packages above it
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {m for m in found if m in MODULES and m != "tunelab"}


def _layer(name: str) -> int:
    top = name.split(".")[1]
    for index, members in enumerate(LAYERS):
        if top in members:
            return index
    raise AssertionError(f"{name}: its package '{top}' has no layer; add it to LAYERS here and to docs/architecture.md")


GRAPH = {name: _imports(name) for name in MODULES if name != "tunelab"}


def test_every_module_has_a_layer():
    for name in GRAPH:
        _layer(name)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = sorted(
        (name, target)
        for name, targets in GRAPH.items()
        for target in targets
        if _layer(target) > _layer(name) and (name, target) not in KNOWN_UPWARD
    )
    assert not upward, "imports from a higher layer (docs/architecture.md, Layers):\n" + "\n".join(
        f"  {a} -> {b}" for a, b in upward
    )


def test_known_exceptions_still_exist():
    """An exception that is gone must leave its list, so that it cannot come back unnoticed."""
    gone = sorted(edge for edge in KNOWN_UPWARD | KNOWN_CYCLE_EDGES if edge[1] not in GRAPH.get(edge[0], ()))
    assert not gone, f"remove from KNOWN_UPWARD / KNOWN_CYCLE_EDGES: {gone}"


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(GRAPH[name]):
            if (name, target) in KNOWN_CYCLE_EDGES:
                continue
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(GRAPH):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_parser_sees_imports_at_the_top_inside_functions_and_relative_ones():
    source = "import tunelab.models.llama\nfrom . import group\n\ndef f():\n    from tunelab.training import step\n"
    found = _imports("tunelab.peft.lora", source)
    assert found == {"tunelab.models.llama", "tunelab.peft.group", "tunelab.training.step"}
    assert _layer("tunelab.training.step") > _layer("tunelab.peft.lora")  # which the rule would refuse
