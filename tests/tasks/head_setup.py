"""The data files and the run the classify and reward run tests share."""

import json
from pathlib import Path


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_labels(folder: Path) -> str:
    """24 rows of three labels, each told by its words."""
    words = {"pos": "great lovely fine", "neg": "awful bad sad", "neu": "table chair door"}
    rows = [
        {"prompt": f"{words[lab].split()[i % 3]} number {i}", "label": lab}
        for i in range(24)
        for lab in [("pos", "neg", "neu")[i % 3]]
    ]
    return write_rows(folder / "labels.jsonl", rows)


def write_pairs(folder: Path) -> str:
    """16 preference pairs: a kind answer chosen over a rude one."""
    rows = [
        {"prompt": f"Say something kind {i}", "chosen": f"You are great {i}", "rejected": f"Go away {i}"}
        for i in range(16)
    ]
    return write_rows(folder / "pairs.jsonl", rows)


def head_overrides(tiny_model_dir: Path, folder: Path, task: str, data: str, **more) -> dict:
    """A three-step LoRA run of a classify or reward head on the tiny model, written to folder/run-<task>."""
    return {
        "task": task,
        "model.name": str(tiny_model_dir),
        "data.train": [data],
        "data.max_length": 64,
        "method.r": 4,
        "train.micro_batch": 4,
        "train.lr": 5e-3,
        "train.max_steps": 3,
        "output_dir": str(folder / f"run-{task}"),
    } | more
