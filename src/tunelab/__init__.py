"""tunelab: fine-tune open LLMs on your own data.

The API is imported on first use, so `import tunelab` stays fast: `tunelab.train(...)`, `tunelab.check(...)`, `tunelab.plan(...)`, `tunelab.compare(...)`,
`tunelab.generate(...)`, `tunelab.chat(...)`, `tunelab.federate(...)`, `tunelab.load_config(...)`. So are the types
its functions return (`tunelab.EvalResult`, `tunelab.Prediction`, ...: _TYPES) and its modules, so the names the
README gives work after a bare `import tunelab`: `except tunelab.errors.TunelabError:`, `tunelab.config.RunConfig(...)`.
"""

__version__ = "0.1.0"

# The names of the Python API: tunelab/api.py exports these (its __all__) and the package forwards them.
_API = (
    "train",
    "check",
    "plan",
    "compare",
    "generate",
    "chat",
    "evaluate",
    "report",
    "merge",
    "export_gguf",
    "push",
    "serve",
    "start_server",
    "cache_entries",
    "cache_path",
    "clear_cache",
    "prune_cache",
    "federate",
    "predict",
    "load_reward_model",
    "open_run",
    "open_head_run",
)

# The types the API's functions return or take, by the module that defines each: imported on first use, so that
# `tunelab.EvalResult` or `from tunelab import Prediction` annotates a variable without importing the rest.
_TYPES = {
    "TrainResult": "tunelab.training.finish",
    "CheckResult": "tunelab.data.checks",
    "PlanReport": "tunelab.training.plan_report",
    "StagesPlanReport": "tunelab.training.plan_config",
    "FederateResult": "tunelab.federated.run",
    "Comparison": "tunelab.eval.compare",
    "EvalResult": "tunelab.eval.evaluate",
    "HeadEvalResult": "tunelab.eval.heads",
    "Prediction": "tunelab.infer.predict",
    "RewardModel": "tunelab.tasks.head_run",
    "HeadRun": "tunelab.tasks.head_run",
    "ExportResult": "tunelab.export.gguf",
    "PushResult": "tunelab.export.push",
    "RunningServer": "tunelab.server.serve",
    "CacheEntry": "tunelab.conversion_cache",
    "LoadedRun": "tunelab.infer.run",
    "GenerationSettings": "tunelab.infer.generate",
    "ResolvedConfig": "tunelab.config.load",
}


def __getattr__(name: str):
    if name in _API:
        from tunelab import api

        return getattr(api, name)
    if name in _TYPES:
        import importlib

        return getattr(importlib.import_module(_TYPES[name]), name)
    if name == "load_config":
        from tunelab.config import load_config

        return load_config
    import importlib.util

    if importlib.util.find_spec(f"tunelab.{name}") is not None:  # a module of the package (errors, config, ...)
        return importlib.import_module(f"tunelab.{name}")
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
