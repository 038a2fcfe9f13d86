"""Planning a staged run before anything is written: each stage's config, chained to the result of the stage before
(`plan_stages`: model.name, model.adapter and what `continue:` allows after an adapter, full or head stage), and
every stage's eval rows loaded, which checks its data (`eval_rows`). What the stages are is training/stages.py's
docstring.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config import ResolvedConfig, RunConfig, stage_config, stage_where
from tunelab.config.render import trained_stages
from tunelab.errors import ConfigError, DataError, RunDirError, article
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.rundir import HEAD_TASKS
from tunelab.tasks import get_task
from tunelab.training.prepare import refuse_beyond_context
from tunelab.training.stage_resume import stage_dir, stage_error

MERGED = "merged"  # stage K's adapter folded into its base, for stage K+1 (continue: merge)


def plan_stages(resolved: ResolvedConfig, run_dir: Path) -> list[ResolvedConfig]:
    """Every stage's config, chained to the stage before (training/stages.py's docstring); ConfigError for a stage
    that cannot start from the previous stage's result."""
    plans: list[ResolvedConfig] = []
    for index, entry in enumerate(trained_stages(resolved)):  # as it trains: a flag's option is not the stage's
        k = index + 1
        stage = stage_config(resolved, index, str(stage_dir(run_dir, k)))
        s = stage.config
        at = stage_where(resolved, k)  # c.yaml:9: stage 2
        if index == 0:
            if "continue" in entry:
                raise ConfigError(
                    f"{at}: continue: {entry['continue']} has no earlier stage to continue from (stage 1 starts "
                    "from model.name, and model.adapter when set). Remove continue from stage 1."
                )
            plans.append(stage)
            continue
        first = plans[0].config.model  # stage 1's: the run's model.name and revision, unless stage 1 sets its own
        if "model.name" in entry and entry["model.name"] != first.name:
            raise ConfigError(
                f"{at}: model.name is {entry['model.name']!r}, but stage {k} starts from stage {index}'s result "
                f"(over {first.name!r}, as stage 1 trains). Remove model.name from the stage, or train it as a run "
                "of its own."
            )
        if "model.revision" in entry and entry["model.revision"] != first.revision:
            raise ConfigError(
                f"{at}: model.revision is {entry['model.revision']!r}, but stage {k} starts from stage {index}'s "
                f"result (over {first.name!r} at {first.revision or 'the default revision'}, as stage 1 trains). "
                "Remove model.revision from the stage: only stage 1's model.revision names the base."
            )
        if "model.adapter" in entry:
            raise ConfigError(
                f"{at}: model.adapter is {entry['model.adapter']!r}, but stage {k} starts from stage {index}'s "
                "result (continue: adapter trains its adapter on; continue: merge starts a fresh one over it). Remove "
                "model.adapter from the stage: only stage 1 starts from an adapter (model.adapter outside stages:)."
            )
        before = plans[-1].config
        how = entry.get("continue", "adapter")
        if before.task in HEAD_TASKS:
            _refuse_after_head(k, before, s, how, at)
        previous = stage_dir(run_dir, index).absolute()  # resumable from any folder: --resume compares these
        if not before.method.is_adapter:  # full or layers: its weights are the next base, with a fresh adapter
            s.model.name, s.model.adapter, s.model.revision = str(previous), None, None
        elif how == "merge":  # the run's model.adapter (stage 1's start) is in the merged weights already
            s.model.name, s.model.adapter, s.model.revision = str(previous / MERGED), None, None
        else:
            if not s.method.is_adapter:
                raise ConfigError(
                    f"{at}: method.name is {s.method.name}, but continue: adapter trains stage {index}'s adapter "
                    "on. Use continue: merge to fold it into the base first."
                )
            same = ("r", "alpha", "target_modules", "rslora")
            differ = [
                f"method.{n} {getattr(s.method, n)!r} (stage {index}: {getattr(before.method, n)!r})"
                for n in same
                if getattr(s.method, n) != getattr(before.method, n)
            ]
            if s.method.dora != before.method.dora:
                differ.append(f"DoRA {s.method.dora} (stage {index}: {before.method.dora})")
            if differ:
                raise ConfigError(
                    f"{at}: it continues stage {index}'s adapter (continue: adapter), but its method differs: "
                    f"{'; '.join(differ)}. Keep the adapter's settings, or use continue: merge."
                )
            s.model.name = before.model.name
            s.model.adapter = str(previous)
        stage.origins["model.name"] = f"stage {index}'s result"
        stage.origins["model.adapter"] = f"stage {index}'s result" if s.model.adapter else "a fresh adapter"
        plans.append(stage)
    return plans


def _refuse_after_head(k: int, before: RunConfig, stage: RunConfig, how: str, at: str) -> None:
    """ConfigError for stage k (written at `at`: config.stage_where) when it cannot start from stage k-1, a classify or reward stage: only a stage of the
    same task continues its adapter and head (with the same labels: `refuse_other_labels`)."""
    task = before.task
    if not before.method.is_adapter:
        why = (
            f"method.name is {before.method.name} there, so its result is a whole {task} model, which no stage can take "
            f"as its base. Make the {task} stage the last one, or train it with method lora"
        )
    elif stage.task != task:
        why = (
            f"stage {k}'s task is {stage.task}: only {article(task)} stage can continue its adapter, which holds the head. "
            f"Make the {task} stage the last one (an sft stage may come before it), or set task: {task} on stage {k}"
        )
    elif how == "merge":
        why = (
            "continue: merge would fold its adapter into the base and lose the head. Remove continue from stage "
            f"{k}: continue: adapter (the default) trains the adapter and the head on"
        )
    else:
        return
    raise ConfigError(f"{at}: stage {k - 1} trains {article(task)} head (task: {task}), and {why}.")


def refuse_other_labels(plans: list[ResolvedConfig], labels: list[list[str] | None]) -> None:
    """ConfigError for a classify stage that continues the head of a classify stage (`plan_stages`) whose training
    rows have other labels (`labels[k]`: stage k+1's, data.facts["labels"]): the head's outputs are its labels."""
    for k in range(2, len(plans) + 1):
        before, now = plans[k - 2].config, plans[k - 1].config
        if before.task == now.task == "classify" and labels[k - 2] != labels[k - 1]:
            raise ConfigError(
                f"stage {k}: its training rows have the labels {labels[k - 1]}, and stage {k - 1}'s have {labels[k - 2]}; "
                f"stage {k} trains stage {k - 1}'s head on, whose outputs are those labels. Give stage {k} rows of the "
                "same labels, or train it as a run of its own."
            )


def eval_rows(plans: list[ResolvedConfig], names: list[str], run_dir: Path) -> list[list]:
    """Each stage's eval rows, rendered with its own data options and the run's tokenizer (the first stage's model:
    every later stage's model descends from it). Loading them also checks every stage's data before anything runs:
    an error names its stage, and advice to score questions names eval of `run_dir` as the caller runs it."""
    first = plans[0].config
    source = resolve_source(first.model.name, first.model.revision)
    tokenizer = load_tokenizer(source, first.model.trust_remote_code, plans[0].spelling)
    rows, labels = [], []
    for k, plan in enumerate(plans, 1):
        try:  # as the stage's task reads its data (an sft stage, a dpo stage after it, ...)
            refuse_beyond_context(plan.config, source, plan.spelling)
            task = get_task(plan.config.task, plan.config, plan.spelling)
            data = task.build_data(plan.config, tokenizer, plan.config.train.seed)
        except (ConfigError, DataError, RunDirError) as exc:
            raise stage_error(exc, k, names, plan.spelling, run_dir) from None
        rows.append(data.eval)
        labels.append(data.facts.get("labels"))
    refuse_other_labels(plans, labels)
    return rows
