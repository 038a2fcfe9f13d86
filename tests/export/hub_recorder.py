"""The hub of the push tests: huggingface_hub's HfApi methods replaced by a recorder (no network here); conftest.py's
`hub` fixture installs it, with a token and offline mode off."""

from pathlib import Path
from types import SimpleNamespace

from huggingface_hub import HfApi

TOKEN = "hf_pushtesttoken0123456789"


class Hub:
    """The HfApi calls a push made, in order: (method, args, kwargs); create_commit's files as {path: bytes}."""

    def __init__(self):
        self.calls = []
        self.files = {}
        self.fail = None  # an exception create_commit raises
        self.private = True  # what repo_info says of the repository

    def install(self, monkeypatch):
        def record(name):
            def method(api, *args, **kwargs):
                self.calls.append((name, args, kwargs))
                if name == "repo_info":
                    return SimpleNamespace(private=self.private)
                if name != "create_commit":
                    return None
                if self.fail is not None:
                    raise self.fail
                for op in kwargs.get("operations", args[1] if len(args) > 1 else []):
                    data = op.path_or_fileobj
                    self.files[op.path_in_repo] = data if isinstance(data, bytes) else Path(data).read_bytes()
                repo = args[0]
                return SimpleNamespace(commit_url=f"https://huggingface.co/{repo}/commit/abc123", oid="abc123")

            return method

        for name in ("create_repo", "create_branch", "repo_info", "create_commit"):
            monkeypatch.setattr(HfApi, name, record(name))
