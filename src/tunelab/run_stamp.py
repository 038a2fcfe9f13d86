"""Who a run is now (`run_stamp`): what compare and eval take before they load the run's model and check again before
they save their result into it (`check_same_run`), so that a run replaced or resumed meanwhile does not get answers
of the model it no longer holds."""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import RunDirError
from tunelab.rundir import RUN_FILE, run_file


def run_stamp(run_dir: str | Path) -> tuple[int, int, int] | None:
    """Who the run is now: its run.json's inode, modification time and size (None without one). A run replaced by
    `train --overwrite` (or changed by --resume) has another."""
    try:
        st = run_file(run_dir).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def check_same_run(run_dir: str | Path, stamp: tuple[int, int, int] | None, what: str) -> None:
    """RunDirError when the run is no longer the one `stamp` was taken of: `what` (compare, eval) ran on a model
    that is not the run's any more, and its result must not be saved into the run as if it were."""
    if run_stamp(run_dir) != stamp:
        raise RunDirError(
            f"{run_dir}: the run was replaced or changed while {what} ran (its {RUN_FILE} differs), so the answers are "
            f"of a model the run no longer holds; nothing was saved. Run {what} again."
        )
