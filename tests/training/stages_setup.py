"""The two-stage run the staged-run tests start from, and how they read a stage's adapter."""

from pathlib import Path

from safetensors.torch import load_file


def docs_then_qa(tiny_overrides: dict, tmp_path: Path) -> dict:
    """Stage 1: raw text about doors (continued pretraining); stage 2: the box questions, with an eval split each."""
    doors = tmp_path / "doors"
    doors.mkdir()
    for i in range(6):
        (doors / f"door{i}.txt").write_text(f"Door {i} of the depot is painted red and opens inwards. " * 3)
    base = {k: v for k, v in tiny_overrides.items() if not k.startswith("data.train")}
    return base | {
        "data.train": [],
        "data.eval_fraction": 0.2,
        "method.dropout": 0.0,
        "train.save_every": 1,
        "stages": [
            {"name": "docs", "data": {"train": [str(doors)], "system_prompt": None}, "train": {"max_steps": 3}},
            {"name": "qa", "data": {"train": tiny_overrides["data.train"]}, "train": {"max_steps": 3}},
        ],
    }


def adapter_of(folder: Path) -> dict:
    return load_file(folder / "adapter_model.safetensors")
