"""The public API stays reachable as functions once every subpackage has been imported."""

import importlib
import pkgutil
import subprocess
import sys

import tunelab


def test_api_names_are_not_shadowed_by_subpackages():
    for module in pkgutil.walk_packages(tunelab.__path__, "tunelab."):
        if not module.name.startswith("tunelab.kernels."):
            importlib.import_module(module.name)
    for name in ("train", "check", "compare", "generate", "chat", "evaluate", "report", "merge", "export_gguf"):
        assert callable(getattr(tunelab, name)), name


def test_import_is_light():
    code = "import sys, tunelab; heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
