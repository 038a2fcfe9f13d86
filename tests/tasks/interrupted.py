"""Resume tests of the tasks: a run trained straight through, and the same run stopped by a crash inside one step
and resumed from its last checkpoint."""

from pathlib import Path

import pytest

from tunelab.training import loop, recipe


class Crash(Exception):
    pass


def straight_and_resumed(common: dict, tmp_path: Path, monkeypatch, crash_at: int):
    """(the uninterrupted run, the resumed one): `common` overrides, the second run crashing in call `crash_at` of
    train_step (after a checkpoint) and then resumed."""
    straight = recipe.train(None, common | {"output_dir": str(tmp_path / "straight")})
    real_step, calls = loop.train_step, {"n": 0}

    def crashing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Crash()
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", crashing_step)
    with pytest.raises(Crash):
        recipe.train(None, common | {"output_dir": str(tmp_path / "resumed")})
    monkeypatch.setattr(loop, "train_step", real_step)
    resumed = recipe.train(None, common | {"output_dir": str(tmp_path / "resumed")}, resume=True)
    return straight, resumed
