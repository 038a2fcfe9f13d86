"""The public API stays reachable as functions once every subpackage has been imported."""

import importlib
import importlib.util
import pkgutil
import subprocess
import sys

import tunelab


def test_api_names_are_not_shadowed_by_subpackages():
    flower = importlib.util.find_spec("flwr") is not None  # tunelab.federated needs the optional federated extra
    for module in pkgutil.walk_packages(tunelab.__path__, "tunelab."):
        if module.name.startswith("tunelab.federated.") and not flower:
            continue
        if not module.name.startswith("tunelab.kernels."):
            importlib.import_module(module.name)
    for name in ("train", "compare", "generate", "chat", "evaluate", "report", "merge", "export_gguf", "federate"):
        assert callable(getattr(tunelab, name)), name


def test_import_is_light():
    code = "import sys, tunelab; heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
