"""Where a command may write its result: the files and folders a run depends on (the data its config reads, the
models it trained over) and the checks made before a result file (eval.json, report.html, predictions) is written,
so that nothing a run needs is replaced and no command's output lands where the next training reads data."""

from __future__ import annotations

from pathlib import Path

from tunelab.atomic import check_can_write
from tunelab.config.flags import PYTHON, Spelling
from tunelab.config.model import embedded_file
from tunelab.config.paths import function_file
from tunelab.errors import RunDirError
from tunelab.rundir import is_run_dir, read_info, run_configs, stage_dirs


def check_output_file(
    path: Path,
    overwrite: bool,
    run_dir: Path,
    own: str,
    inputs: tuple[str | Path, ...] = (),
    mkdir: bool = False,
    suffix: str | tuple[str, ...] | None = None,
    spelling: Spelling = PYTHON,
) -> None:
    """RunDirError before any work when a command (eval, report) cannot write its result file `path`: it is a
    folder or another file than a regular one, it is one of the command's `inputs` or inside one that is a folder,
    it would replace a file of the run other than the command's `own` one (run.json, the weights: --overwrite never
    allows that) or any file of another run directory, a stage's or a checkpoint's, it is the `own` file of another
    run directory (whose report would show it as that run's), it would replace a file the run's config names (data,
    function files) or of the models it depends on, it is a new file inside a run directory (but the run's own `own`:
    the run's --overwrite would refuse, naming it, and --overwrite-non-run delete it), it exists and `overwrite` is off, its folder is missing (made
    when `mkdir`), or its name does not end in `suffix` (eval's JSON in a `results.csv`; a tuple: any of them, the first
    the format's own); WriteFailed when its folder cannot be written (read-only), said before the work rather than
    after."""
    overwrite_ = "--overwrite" if spelling.flags else "overwrite=True"
    if path.is_dir():
        raise RunDirError(f"{path}: is a folder; give a file name to write to.")
    if path.exists() and not path.is_file():  # the result is renamed into place: /dev/null would be replaced
        raise RunDirError(
            f"{path}: is not a regular file (a device, pipe or socket), which the result would replace; give a file "
            "name to write to."
        )
    refuse_file_in_the_way(path, str(path))  # first: a path under a data file is no file in its folder
    target = path.resolve()
    if any(target == Path(p).resolve() for p in inputs):
        raise RunDirError(f"{path}: is this command's input; write the result elsewhere.")
    for folder in (Path(p) for p in inputs):  # a data folder: every file in it is read, the result too next time
        if folder.is_dir() and target.is_relative_to(folder.resolve()):
            raise RunDirError(
                f"{path}: is inside {folder}, this command's input folder, whose files are all read as data (this "
                "one too, next time); write the result elsewhere."
            )
    if path.exists() and target.parent == Path(run_dir).resolve() and path.name != own:
        raise RunDirError(
            f"{path}: is a file of the run itself; {overwrite_} replaces only its {own}. Write elsewhere."
        )
    if path.name == own and target.parent != Path(run_dir).resolve() and is_run_dir(target.parent):
        raise RunDirError(
            f"{path}: is where the run {path.parent} keeps its own {own}, which its report shows as that run's; this "
            f"is {run_dir}'s. Write elsewhere, or under another name."
        )
    holder = next((f for f in target.parents if is_run_dir(f)), None)
    if holder is not None and not (holder == Path(run_dir).resolve() and target.parent == holder and path.name == own):
        raise RunDirError(  # a stage's or a checkpoint's file, or one of another run: its commands read it as it was
            f"{path}: is a file of the run directory {holder}; {overwrite_} never replaces a run's files. Write "
            "elsewhere."
            if path.exists()
            else f"{path}: is inside the run directory {holder}, where a file tunelab did not write stops that run's "
            "'tunelab train --overwrite' (refused, naming it) until it is moved out, and '--overwrite-non-run' deletes "
            "it with the run; write it outside every run directory (e.g. beside it)."
        )
    if option := _data_holding(target, run_dir):  # a new file too: in a data folder, the next training reads it
        raise RunDirError(
            f"{path}: is a file of {option} of the run's config; {overwrite_} never replaces data. Write elsewhere."
            if path.exists()
            else f"{path}: is where {option} of the run's config reads its data, so the next training would read it "
            "as data; write it elsewhere."
        )
    if path.exists() and (model := _model_holding(target, run_dir)):
        raise RunDirError(f"{path}: is a file of {model}; {overwrite_} never replaces it. Write elsewhere.")
    if path.exists() and not overwrite:
        given, out = ("--overwrite", "--out") if spelling.flags else ("overwrite=True", "out=")
        raise RunDirError(f"{path} exists. Pass {given} to replace it, or {out} to write elsewhere.")
    if not path.parent.is_dir() and not mkdir:
        raise RunDirError(f"{path.parent}: no such directory to write {path.name} into.")
    suffixes = (suffix,) if isinstance(suffix, str) else suffix
    if suffixes and path.suffix.lower() not in suffixes:
        option = "--out" if spelling.flags else "out="
        raise RunDirError(
            f"{path}: the result is written as {suffixes[0]} ({own}'s format); give {option} a file name ending in "
            f"{' or '.join(suffixes)}."
        )
    check_can_write(path)  # a read-only folder: said now, not after the work


def refuse_file_in_the_way(path: Path, what: str) -> None:
    """RunDirError, before any work, when a file stands where a folder above `path` would be (report.html/x.html):
    making its folders failed after the work, in a traceback. `what`: how the error names the path (an option)."""
    above = next((f for f in Path(path).parents if f.exists()), None)
    if above is not None and not above.is_dir():
        raise RunDirError(f"{what}: {above} is a file, not a folder; give a path whose folders are folders.")


def _model_holding(target: Path, run_dir: Path) -> str | None:
    """Which model the run depends on (`models_of`) holds the file `target`; None when none does."""
    return next((what for what, model in models_of(run_dir) if target == model or target.is_relative_to(model)), None)


def models_of(run_dir: str | Path) -> list[tuple[str, Path]]:
    """The models the run depends on that lie on this machine, each as (what it is, where: `model_location`): the
    base it trained over, each stage's (a staged run's first stage started from the base its later stages' merged
    models came from), and the adapter a config started from. What no command writes into or over; empty when the
    run cannot be read."""
    try:
        info, configs = read_info(run_dir, require_finished=False), run_configs(Path(run_dir))
    except RunDirError:
        return []
    named = [(f"the base model {info.base_model}", info.base_model)]
    for stage in stage_dirs(run_dir):
        try:
            named.append((f"the base model {(base := read_info(stage, False).base_model)} of {stage.name}", base))
        except RunDirError:
            continue
    named += [
        (f"the adapter {c.model.adapter} the run started from", c.model.adapter) for c in configs if c.model.adapter
    ]
    found: list[tuple[str, Path]] = []
    for what, given in named:
        where = model_location(given)
        if where is not None and where not in (w for _, w in found):
            found.append((what, where))
    return found


def model_location(name: str) -> Path | None:
    """Where the model (or adapter) a run names lies on this machine, resolved: the installed .gguf file of an alias
    (smollm2-135m-instruct), a local folder or file; None for a hub id (its files are transformers' cache's) or a path
    that is not there. What no command writes into or over (`check_output_file`, export/merge.py's check_output)."""
    local = embedded_file(name) or Path(name).expanduser()
    return local.resolve() if local.exists() else None


def data_of(run_dir: str | Path) -> list[tuple[str, Path]]:
    """The files and folders the run's saved config (and each stage's) reads as data or functions, each as (option,
    resolved path), as ("data.train", ...); empty when the config cannot be read (the other checks still apply)."""
    try:
        configs = run_configs(Path(run_dir))  # a staged run: the data of every stage
    except RunDirError:
        return []
    named = []
    for config in configs:
        named += [("data.train", e if isinstance(e, str) else e.path) for e in config.data.train]
        named += [("data.train", e.eval) for e in config.data.train if not isinstance(e, str)]
        named += [("data.eval", config.data.eval), ("eval.questions", config.eval.questions)]
        named += [("federated.clients", c) for c in config.federated.client_paths()]
        named += [("federated.split_file", config.federated.split_file)]
        functions = [("data.transform", config.data.transform)]
        functions += [("grpo.rewards", r.function) for r in config.grpo.rewards if not isinstance(r, str)]
        named += [(option, function_file(spec)) for option, spec in functions if spec]
    return [(option, Path(given).resolve()) for option, given in named if given]


def _data_holding(target: Path, run_dir: Path) -> str | None:
    """Which data option of the run's saved config (or of a stage's) names the file `target` (itself, or a folder
    holding it), as "data.train"; None when none does or the config cannot be read (the other checks still apply)."""
    return next((option for option, p in data_of(run_dir) if target == p or target.is_relative_to(p)), None)
