"""train.keep_best: the trainable weights of the lowest eval loss so far, kept on disk and put back at the end.

Each evaluation that beats the best so far writes the trainable tensors to `checkpoints/best.safetensors`, with the
step and the eval loss in the file's metadata, in one atomic write (checkpoint.save_trainable), so the weights and
their step never disagree after a crash. A resumed run reads the best so far from it, unless it is newer than the
checkpoint resumed from: the run repeats those steps (exactly), so it evaluates them again. The best before them,
which that newer one overwrote, comes from the copy each checkpoint keeps of the best so far (`keep_with`). At the
end, when the best is not the last step, its weights are loaded back into the model before the result is saved, and
the file, now redundant with the result, is removed.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError
from torch import nn

from tunelab.training.checkpoint import load_trainable, read_trainable_metadata, save_trainable

BEST_FILE = "best.safetensors"


class BestWeights:
    """Remembers the step with the lowest eval loss; `enabled` is keep_best with an eval split."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None, checkpoint: Path | None = None):
        """resume_step: the step of the checkpoint a resumed run starts from (None for a new run); checkpoint: its
        folder, whose copy of the best (`keep_with`) is the best as of that step."""
        self.path = Path(run_dir) / "checkpoints" / BEST_FILE
        self.enabled = enabled
        self.step: int | None = None
        self.loss = math.inf
        if not (enabled and resume_step is not None):
            return
        if self.path.is_file() and self._read(self.path, resume_step):
            return  # the best up to the checkpoint's step (its final evaluation too, which comes after its save)
        self.path.unlink(missing_ok=True)  # torn, foreign, or newer: the run repeats those steps, evaluating them again
        kept = checkpoint / BEST_FILE if checkpoint is not None else None
        if kept is not None and kept.is_file() and self._read(kept, resume_step):
            _share(kept, self.path)  # the best before the checkpoint, which the newer one had overwritten

    def _read(self, path: Path, resume_step: int) -> bool:
        """Take the step and loss of a best's file; False when it is unreadable or newer than `resume_step`."""
        found = _best_in(path, resume_step)
        if found is None:
            return False
        self.step, self.loss = found
        return True

    def keep_with(self, checkpoint: Path) -> None:
        """Copy the best so far into a checkpoint's folder: a later best overwrites the file beside the checkpoints,
        and a run resumed from this checkpoint, which forgets that later one, still has the best before it."""
        if not (self.enabled and self.step is not None and self.path.is_file()):
            return
        _share(self.path, checkpoint / BEST_FILE)

    def observe(self, step: int, eval_loss: float, model: nn.Module) -> bool:
        """Keep the model's trainable weights when `eval_loss` is the lowest so far; True when kept."""
        if not self.enabled or not eval_loss < self.loss:
            return False
        save_trainable(model, self.path, {"step": str(step), "eval_loss": repr(eval_loss)})
        self.step, self.loss = step, eval_loss
        return True

    def restore(
        self, model: nn.Module, last_step: int, last_loss: float | None, keep_file: bool = False, reward: bool = False
    ) -> str | None:
        """Load the best weights back when they are not the last step's; a sentence saying what happened. keep_file:
        leave the best's file beside the step checkpoints kept after the run, so that a --resume that trains on
        still knows it. reward: the eval loss is a held-out reward negated (grpo), and the sentence speaks of the
        reward, the highest, not of a negative loss, the lowest."""
        if not self.enabled or self.step is None:
            return None
        figure, most = ("held-out reward", "highest") if reward else ("eval loss", "lowest")
        sign = -1 if reward else 1
        if self.step == last_step:
            message = (
                f"keep_best: the last step ({last_step}) had the {most} {figure} ({sign * self.loss:.4f}); "
                "it is the result."
            )
        else:
            load_trainable(model, self.path)
            last = f"{sign * last_loss:.4f}" if last_loss is not None else "?"
            result = (
                f"the saved result is the untrained adapter, as before training: training did not improve the {figure}"
                if self.step == 0
                else "they are the saved result"
            )
            message = (
                f"keep_best: loaded the weights of step {self.step}, whose {figure} {sign * self.loss:.4f} was the "
                f"{most} (the last step, {last_step}, had {last}); {result}."
            )
        if not keep_file:
            self.path.unlink(missing_ok=True)
        return message


def _best_in(path: Path, up_to: int) -> tuple[int, float] | None:
    """(step, eval loss) of a best's file; None when it is missing, unreadable or newer than step `up_to`."""
    try:
        meta = read_trainable_metadata(path)
        step, loss = int(meta["step"]), float(meta["eval_loss"])
    except (OSError, ValueError, KeyError, SafetensorError):
        return None
    return (step, loss) if step <= up_to else None


FSDP2_ADVICE = (
    "train.keep_best was off under train.sharding fsdp2, so the result is the last step's weights; train under ddp "
    "to save the weights of the lowest eval loss instead."
)


def off_under_fsdp2(run_dir: Path, resume_step: int | None, checkpoint: Path | None) -> str:
    """What a run with train.keep_best and an eval split is told under train.sharding fsdp2, where keep_best is off
    (each rank holds only its shards of the trainable weights, which it saves and loads whole): the result is the last
    step's weights, and a run resumed onto fsdp2 drops the best step chosen before."""
    note = (
        "keep_best: off under train.sharding fsdp2 (each rank holds only its shards of the weights; keep_best runs "
        "under ddp), so the result is the last step's weights"
    )
    if resume_step is None:
        return note + "."
    kept = [Path(run_dir) / "checkpoints" / BEST_FILE] + ([checkpoint / BEST_FILE] if checkpoint else [])
    before = next((found for path in kept if (found := _best_in(path, resume_step)) is not None), None)
    if before is None:
        return note + "."
    return (
        f"{note}, not step {before[0]} (eval loss {before[1]:.4f}), which keep_best chose before this resume. "
        "Resume under train.sharding ddp to keep it."
    )


def _share(source: Path, target: Path) -> None:
    """`target` holds what `source` does: a hard link (no second copy of the weights on disk; the best's file is
    only ever replaced, never written in place), or a copy where links are not possible; atomically either way."""
    scratch = target.with_name(f".tmp-{target.name}")
    scratch.unlink(missing_ok=True)
    try:
        os.link(source, scratch)
    except OSError:
        shutil.copyfile(source, scratch)
    os.replace(scratch, target)
