"""`tunelab plan` for any config: one run's plan (training/plan.py), or a staged config's, stage by stage.

A staged run plans each stage when that stage's `tunelab train` starts, so plan does the same: every stage with its
own data and options, over the first stage's model config (a stage's model is the stage before's result, of the same
shapes). A federated config is refused: its clients choose their auto values from their own data as they train.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import ResolvedConfig
from tunelab.errors import ConfigError, TunelabError
from tunelab.training.plan_report import PlanReport, plan_run
from tunelab.training.stage_plan import plan_stages


@dataclass
class StagesPlanReport:
    """What `tunelab plan` prints for a staged config: each stage's (name, plan)."""

    stages: list[tuple[str, PlanReport]]

    def text(self) -> str:
        return "\n\n".join(f"=== stage {k}: {name}\n{report.text()}" for k, (name, report) in enumerate(self.stages, 1))


def plan_config(
    resolved: ResolvedConfig, gpu_memory: str | None = None, nproc: int = 1, budget_name: str = "--gpu-memory"
) -> PlanReport | StagesPlanReport:
    """The plan of `resolved` on `nproc` processes: a PlanReport, or for a staged config (one process only, as train
    runs it) a StagesPlanReport. A stage's error (bad data, nothing fits) names the stage. `budget_name`: how
    gpu_memory was given, named in its errors (--gpu-memory, or gpu_memory= in Python)."""
    cfg = resolved.config
    if cfg.federated.enabled:
        named = shlex.quote(str(resolved.path)) if resolved.path is not None else "CONFIG"
        raise ConfigError(
            "tunelab plan plans a tunelab train run; a federated config's clients choose their auto values from "
            f"their own data when they train (tunelab check {named} shows them, client by client)."
        )
    if not cfg.stages or nproc > 1:  # a staged config on several processes: refused as train --nproc refuses it
        return plan_run(cfg, gpu_memory, nproc, budget_name, resolved.spelling)
    plans = plan_stages(resolved, Path(cfg.output_dir))
    base = plans[0].config.model
    reports = []
    for k, stage in enumerate(plans, 1):
        model = dataclasses.replace(stage.config.model, name=base.name, adapter=None)
        s = dataclasses.replace(stage.config, model=model)
        try:
            reports.append(
                (cfg.stages[k - 1].get("name") or s.task, plan_run(s, gpu_memory, 1, budget_name, resolved.spelling))
            )
        except TunelabError as exc:
            raise type(exc)(f"stage {k}: {exc}") from None
    return StagesPlanReport(reports)
