"""The report's sections about the run itself: what was trained (run.json), the stages of a staged run with its
forgetting matrix, and the data it trained on (data_report.json: files, the rows data.transform made, splits, text
blocks, a mixture's sources and a packed one's rows per epoch, skipped rows, rows cut to max_length and where, rows
holding characters the tokenizer drops, notes, token lengths).
"""

from __future__ import annotations

from tunelab.data.report import PROMPTS, LengthStats, Unread
from tunelab.errors import counted
from tunelab.eval.report_html import esc, fmt, kv_table
from tunelab.eval.report_inputs import Input
from tunelab.eval.report_plots import histogram_plot
from tunelab.rundir import federation_stopped
from tunelab.training.forgetting import unmeasured


def run_summary(run: Input, metrics: list[dict] | None = None) -> str:
    """What was trained; `metrics`: the records of metrics.jsonl, for the last step's eval loss where train.keep_best
    kept an earlier step's weights (run.json's eval_loss is then that step's), and the last one logged by a run
    stopped early (its run.json has none)."""
    if run.data is None:
        return run.missing("run summary")
    d: dict = run.data

    def loss(value) -> str | None:
        return f"{value:.4f}" if isinstance(value, int | float) else None

    # grpo's eval loss is its held-out reward negated (for keep_best): shown as the reward
    figure, most, sign = ("held-out reward", "highest", -1) if d.get("task") == "grpo" else ("eval loss", "lowest", 1)
    # a federated run counts rounds (its steps are the clients'), and its run.json holds no token count
    federated = isinstance((d.get("extra") or {}).get("federated"), dict)
    step = "round" if federated else "step"
    stopped = federation_stopped(d.get("extra") or {})  # run.json said finished after every round before 2026-12-05
    # the plain-words verdict training printed (training/verdict.py); a staged run's is its last stage's
    verdict = (d.get("extra") or {}).get("verdict")
    staged = isinstance((d.get("extra") or {}).get("forgetting"), dict)
    verdict_name = "verdict of the last stage" if staged else "verdict"
    best = (d.get("extra") or {}).get("best")
    kept = best.get("step") if isinstance(best, dict) else None
    value = sign * d["eval_loss"] if isinstance(d.get("eval_loss"), int | float) else None
    if isinstance(kept, int) and kept != d.get("steps") and value is not None:  # an earlier step's weights
        last = [
            r["eval_loss"]
            for r in metrics or []
            if isinstance(r, dict) and r.get("step") == d.get("steps") and isinstance(r.get("eval_loss"), int | float)
        ]
        evals = [
            (f"{figure} of the result", f"{loss(value)} ({step} {kept}, the {most}; kept by train.keep_best)"),
            (f"{figure} at the last {step}", loss(sign * last[-1]) if last else None),
        ]
    elif value is None and not d.get("finished"):  # stopped (or still training): its evaluations so far
        logged = [
            r
            for r in metrics or []
            if isinstance(r, dict) and isinstance(r.get("eval_loss"), int | float) and isinstance(r.get("step"), int)
        ]
        last = f"{loss(sign * logged[-1]['eval_loss'])} ({step} {logged[-1]['step']})" if logged else None
        evals = [(f"last logged {figure}", last)]
    else:
        evals = [(f"final {figure}", loss(value))]

    return kv_table(
        [
            ("base model", d.get("base_model")),
            ("task", _task(d)),
            ("method", _method(d)),
            ("implementation", d.get("impl")),
            ("template", d.get("template")),
            ("system prompt", d.get("system_prompt")),
            ("refusal sentence", d.get("refusal")),
            ("finished", _finished(d, stopped)),
            ("how training ended", None if federated else _end(d)),
            ("rounds" if federated else "optimizer steps", _steps(d)),
            (
                "final train loss" if d.get("finished") and not stopped else "last logged train loss",
                _final_loss(d, loss),
            ),
            *evals,
            ("tokens trained on" + (" (all clients)" if federated else ""), _tokens(d, federated)),
            ("training time", f"{d['elapsed_s']:.0f} s" if isinstance(d.get("elapsed_s"), int | float) else None),
            (verdict_name, verdict.get("text") if isinstance(verdict, dict) else None),
        ]
    )


def _method(d: dict) -> str | None:
    """run.json's method, with how its adapter started (method.init), rsLoRA and an NF4 base where they apply."""
    init = d.get("init")
    facts = [
        f"init {init}" if isinstance(init, str) and init != "default" else "",
        "rsLoRA" if d.get("rslora") is True else "",
        "base in NF4 (QLoRA)" if d.get("quantize_base") == "nf4" else "",
    ]
    return ", ".join([str(d.get("method")), *filter(None, facts)]) if d.get("method") is not None else None


def _task(d: dict) -> str | None:
    """run.json's task; a dpo run's with its loss and beta (extra.dpo), as an orpo run is no DPO run."""
    dpo = (d.get("extra") or {}).get("dpo")
    if d.get("task") != "dpo" or not isinstance(dpo, dict) or not isinstance(dpo.get("loss"), str):
        return d.get("task")
    beta = dpo.get("beta")
    weight = "lambda" if dpo["loss"] == "orpo" else "beta"  # orpo's dpo.beta weighs its odds-ratio term
    return f"dpo (loss {dpo['loss']}" + (f", {weight} {beta:g})" if isinstance(beta, int | float) else ")")


def _tokens(d: dict, federated: bool) -> str | None:
    """run.json's tokens; a federation's are its clients' (0 in one recorded before they were counted: not shown)."""
    tokens = d.get("tokens")
    if not isinstance(tokens, int) or (federated and tokens <= 0):
        return None
    return f"{tokens:,}"


def _finished(d: dict, stopped: tuple[int, int] | None) -> str:
    if stopped:
        done, rounds = stopped
        return f"no: stopped after round {done} of {rounds} (or still running); tunelab federate --resume runs the rest"
    staged = (d.get("extra") or {}).get("stopped")  # a staged run stopped early (training/stages.py)
    if not d.get("finished") and isinstance(staged, dict) and isinstance(staged.get("stage"), int):
        k, count, names = staged["stage"], staged.get("stages", "?"), (d.get("extra") or {}).get("stages") or []
        name = f" ({names[k - 1]})" if isinstance(names, list) and 0 < k <= len(names) else ""
        if staged.get("stage_finished") and k == count:
            return f"no: stopped after its last stage {k} of {count}{name} was saved; --resume writes the run's result"
        if staged.get("stage_finished"):
            return f"no: stopped after stage {k} of {count}{name}, which was saved; --resume starts the next"
        return f"no: stopped in stage {k} of {count}{name}; --resume continues it"
    return "yes" if d.get("finished") else "no (the run stopped early or is still training)"


def _end(d: dict) -> str | None:
    """Why training stopped, as run.json's `end` records it (training/progress.py end_record)."""
    end = d.get("end")
    if not isinstance(end, dict) or not isinstance(end.get("reason"), str):
        if d.get("finished"):
            return None  # a run written before 2026-12-05
        return (
            "not recorded: still training, killed outright (SIGKILL, out of memory) after its last checkpoint, or "
            "stopped by a version of tunelab before 2026-12-05"
        )
    step = end.get("step", "?")
    reason = end["reason"]
    if reason == "finished":
        return f"finished: every step trained ({step})"
    if reason == "early_stopped":
        stop = (d.get("extra") or {}).get("early_stop") or {}
        waited = stop.get("waited") or []
        figure = "held-out reward" if d.get("task") == "grpo" else "eval loss"  # grpo's eval loss: the reward negated
        best = stop.get("best_eval_loss")
        at = (
            f"; the best, step {stop['best_step']}'s: {-best if d.get('task') == 'grpo' else best:.4f}"
            if isinstance(best, int | float) and isinstance(stop.get("best_step"), int)
            else ""
        )
        return (
            f"stopped early after step {step} of {stop.get('planned_steps', '?')} planned: {len(waited)} evaluations "
            f"in a row without a new best {figure} (train.early_stopping_patience {stop.get('patience', '?')}){at}"
        )
    if reason == "interrupted":
        by = "SIGTERM (kill, a job scheduler)" if end.get("signal") == "SIGTERM" else "Ctrl-C (SIGINT)"
        return f"interrupted by {by} after step {step}; --resume continues it from its last checkpoint"
    if reason == "non_finite":
        return (
            f"stopped by the non-finite guard at step {step}: train.max_bad_steps steps in a row had a NaN or inf loss "
            "or gradient norm (exit code 3)"
        )
    if reason == "error":
        return f"stopped by an error after step {step}: {end.get('error') or 'not recorded'}"
    return f"{reason} (step {step})"  # a reason written by a later version


def _steps(d: dict) -> str:
    """Steps done of the run's total; a staged run stopped early knows the lengths of the stages started alone."""
    text = f"{d.get('steps', '?')} of {d.get('total_steps', '?')}"
    staged = (d.get("extra") or {}).get("stopped")
    started = staged.get("stage") if isinstance(staged, dict) else None
    if not d.get("finished") and isinstance(started, int) and started != staged.get("stages"):
        text += f" (the total of the {counted(started, 'stage')} started; later stages' lengths are not known yet)"
    return text


def _final_loss(d: dict, loss) -> str | None:
    """run.json's final_loss; a federated run's names its round when a later round applied no update (none trained)."""
    federated = (d.get("extra") or {}).get("federated")
    at = federated.get("final_loss_round") if isinstance(federated, dict) else None
    text = loss(d.get("final_loss"))
    if text is None or not isinstance(at, int) or at == d.get("steps"):
        return text
    return f"{text} (round {at}, the last whose clients' update was applied)"


def stages_section(run: Input) -> str | None:
    """A staged run (training/stages.py): its stages, and the forgetting matrix, the eval loss after each stage (rows)
    on each stage's eval data (columns); None for a run of one stage."""
    extra = (run.data or {}).get("extra") or {}
    forgetting = extra.get("forgetting")
    if not isinstance(forgetting, dict) or not isinstance(extra.get("stages"), list):
        return None
    stages = [s for s in extra["stages"] if isinstance(s, dict)]
    rows = "".join(
        f"<tr><td>{esc(s.get('name'))}</td><td>{esc(s.get('dir'))}</td><td>{esc(s.get('continue') or 'start')}</td>"
        f'<td>{esc(s.get("method"))}</td><td class="num">{fmt(s.get("steps"), "int")}</td>'
        f'<td class="num">{esc(_stage_eval(s))}</td></tr>'
        for s in stages
    )
    names = [str(n) for n in forgetting.get("stages") or []]
    matrix = forgetting.get("matrix") or []
    measures = forgetting.get("measures")  # "eval reward" for a grpo stage's column (training/stages.py)
    if isinstance(measures, list):
        reward = [j < len(measures) and measures[j] == "eval reward" for j in range(len(names))]
        negated = [False] * len(names)
    else:  # a run written before 2026-12-05: a grpo stage's column holds its eval_loss, the reward negated
        reward = [False] * len(names)
        negated = [j < len(stages) and stages[j].get("task") == "grpo" for j in range(len(names))]
    marks = [" (reward)" if r else " (negated reward)" if n else "" for r, n in zip(reward, negated)]
    head = "".join(f'<th class="num">on {esc(n)}{m}</th>' for n, m in zip(names, marks))
    body = "".join(
        f"<tr><th>after {esc(names[k] if k < len(names) else k + 1)}</th>"
        + "".join(f'<td class="num">{fmt(v, "loss")}</td>' for v in row)
        + "<td></td>" * (len(names) - len(row))
        + "</tr>"
        for k, row in enumerate(matrix)
    )
    return (
        '<table class="stages"><thead><tr><th>stage</th><th>folder</th><th>started from</th><th>method</th>'
        f'<th class="num">steps</th><th class="num">eval after the stage</th></tr></thead><tbody>{rows}</tbody></table>'
        "<h3>Forgetting: eval loss after each stage on each stage's eval data</h3>"
        '<p class="sub">A row is the model after that stage; a column is a stage\'s eval data. A loss that rises down a '
        "column is forgetting"
        + (
            "; a column marked (reward) is a grpo stage's: the mean reward of greedy answers, which falls"
            if any(reward)
            else ""
        )
        + (
            "; a column marked (negated reward) is a grpo stage's: its eval loss, the mean reward of greedy answers "
            "negated (the run was written before run.json said so), which rises as it falls"
            if any(negated)
            else ""
        )
        + "".join(
            f". Not measured (–): {esc(c)}: a stage scores only the eval data of its own task"
            for c in ["; ".join(unmeasured(names, matrix, [str(s.get("task")) for s in stages]))]
            if c
        )
        + ". The Data section below is the last stage's; each stage-K folder holds its own.</p>"
        f'<table class="forgetting"><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _stage_eval(stage: dict) -> str:
    """A stage's eval figure: `eval_reward` for a grpo stage, else `eval_loss`; a grpo stage of a run written before
    2026-12-05 holds the reward negated as its `eval_loss`, read back as the reward."""
    reward = stage.get("eval_reward")
    loss = stage.get("eval_loss")
    if not isinstance(reward, int | float) and stage.get("task") == "grpo" and isinstance(loss, int | float):
        reward = -loss
    if isinstance(reward, int | float):
        return f"reward {reward:.4f}"
    return f"loss {loss:.4f}" if isinstance(loss, int | float) else "-"


def _sources_table(d: dict) -> str:
    """A mixture's sources (data/mixture.py): what each holds and what an epoch draws from it."""
    sources = d.get("sources") or {}
    if not sources:
        return ""
    keys = ("examples", "rows", "tokens", "drawn_rows", "drawn_tokens", "eval_rows")
    body = "".join(
        f'<tr><td>{esc(name)}</td><td class="num">{esc(s.get("weight") if s.get("weight") is not None else "-")}</td>'
        f'<td class="num">{100 * (s.get("share") or 0):.1f}%</td>'
        + "".join(f'<td class="num">{fmt(s.get(k), "int")}</td>' for k in keys)
        + "</tr>"
        for name, s in sources.items()
    )
    return (
        f"<h3>Sources (weights count {esc(d.get('mix_by') or 'examples')})</h3>"
        '<table class="sources"><thead><tr><th>source</th><th class="num">weight</th><th class="num">share</th>'
        '<th class="num">examples</th><th class="num">rows</th><th class="num">tokens</th>'
        '<th class="num">rows / epoch</th><th class="num">tokens / epoch</th><th class="num">eval rows</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
        + (  # a packed mixture's step count is made of these (the rows above are before packing)
            f"<p>Each epoch's draw is packed: epoch 0 trains on {counted(packed, 'packed row')}.</p>"
            if (packed := _whole(d.get("packed_epoch_rows")))
            else ""
        )
    )


def _whole(value) -> int:
    """A count of data_report.json, or 0 where it holds none (an older or hand-edited report)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _made(d: dict) -> str:
    """The rows data.transform made of records it turned into several rows, as the terminal says them."""
    made, records = _whole(d.get("made_rows")), _whole(d.get("made_from"))
    if not records:
        return ""
    return (
        f'<p class="sub">{made:,} of the records read were made by data.transform of '
        f"{counted(records, 'record')} (a list of rows each).</p>"
    )


def data_section(report: Input, clients: str | None = None) -> str:
    """The run's data (data_report.json); `clients`: a federation's note of the data its clients trained on, which
    the server never read, put first (federated/history.py clients_data_section)."""
    if report.data is None:
        return (clients or "") + report.missing("data report")
    d: dict = report.data
    files = "".join(
        f"<tr><td>{esc(path)}</td><td>{esc((d.get('formats') or {}).get(path, '?'))}</td>"
        + "".join(f'<td class="num">{fmt(c.get(k), "int")}</td>' for k in ("read", "used", "skipped", "truncated"))
        + "</tr>"
        for path, c in (d.get("files") or {}).items()
    )
    split = str(d.get("eval_source", "none"))
    if d.get("split_seed") is not None:  # the seed that drew a data.eval_fraction split, as the terminal says it
        split += f", split seed {d['split_seed']}"
    parts = [
        clients or "",
        f'<p class="sub">template {esc(d.get("template") or "?")}, max_length {esc(d.get("max_length"))}, '
        f"packing {'on' if d.get('packed') else 'off'}, eval split: {esc(split)}.</p>",
        '<table class="files"><thead><tr><th>file</th><th>format</th><th class="num">read</th><th class="num">used</th>'
        f'<th class="num">skipped</th><th class="num">truncated</th></tr></thead><tbody>{files}</tbody></table>',
        _made(d),
    ]
    # grpo's rows are prompts (data/report.py PROMPTS): no token of theirs has a label, the sampled answers do
    prompts = bool(d.get("formats")) and set((d.get("formats") or {}).values()) == {PROMPTS}
    columns = ("examples", "used", "rows", "tokens") + (() if prompts else ("loss_tokens",))
    splits = "".join(
        f"<tr><th>{name}</th>"
        + "".join(f'<td class="num">{fmt((d.get(name) or {}).get(k), "int")}</td>' for k in columns)
        + ("<td>on the sampled answers</td>" if prompts else "")
        + "</tr>"
        for name in ("train", "eval")
    )
    pairs = bool(d.get("pairs"))  # preference pairs: two rows each (chosen, rejected), lengths per side
    parts.append(
        f'<table class="splits"><thead><tr><th>split</th><th class="num">{"pairs" if pairs else "examples"}</th>'
        f'<th class="num">used</th><th class="num">{"rows (both sides)" if pairs else "rows"}</th>'
        '<th class="num">tokens</th><th class="num">tokens with loss</th></tr></thead>'
        f"<tbody>{splits}</tbody></table>"
    )
    if blocks := _whole(d.get("text_blocks")):  # text documents cut into blocks (data/render.py `_text_blocks`)
        parts.append(
            f"<p>Text: {counted(blocks, 'block')} of {esc(d.get('max_length'))} tokens cut from documents.</p>"
        )
    parts.append(_sources_table(d))
    skips = d.get("skips") or {}
    if skips:
        items = "".join(
            f'<tr><td>{esc(reason)}</td><td class="num">{fmt(s.get("count"), "int")}</td><td>{esc(", ".join(s.get("locations") or []))}'
            f"{' …' if (s.get('count') or 0) > len(s.get('locations') or []) else ''}</td></tr>"
            for reason, s in skips.items()
        )
        parts.append(
            '<h3>Skipped rows</h3><table class="skips"><thead><tr><th>reason</th><th class="num">rows</th>'
            f"<th>first locations</th></tr></thead><tbody>{items}</tbody></table>"
        )
    else:
        parts.append("<p>No rows were skipped.</p>")
    parts.append(_kept_as_is(d))
    lengths = d.get("lengths") or {}
    if lengths.get("count"):
        bounds = LengthStats(at_least=lengths.get("at_least") or 0).bounds_note(
            "side" if pairs else "example", "max_length"
        )
        parts.append(
            ("<h3>Token lengths per side (chosen or rejected)</h3>" if pairs else "<h3>Token lengths</h3>")
            + kv_table(
                [
                    (k, lengths.get(k) if k != "mean" else f"{lengths['mean']:.1f}")
                    for k in ("count", "min", "median", "mean", "p95", "max")
                ]
            )
            + (f'<p class="sub">{esc(bounds)}.</p>' if bounds else "")
        )
        parts.append(histogram_plot(lengths, d.get("max_length"), "side" if pairs else "example"))
    return "".join(parts)


def _kept_as_is(d: dict) -> str:
    """What the data report says of rows kept though not read as written, and its notes, as the terminal said them
    (data/report.py `losses`): the rows cut to max_length and where, the rows holding characters the tokenizer drops,
    and what is worth knowing."""
    unread = d.get("unread") or {}
    parts = []
    cut = _whole(d.get("total_truncated")) or sum(_whole(c.get("truncated")) for c in (d.get("files") or {}).values())
    if cut:  # the terminal's "truncated to max_length" line: which rows, not only how many per file
        at = [str(where) for where in d["truncated_at"]] if isinstance(d.get("truncated_at"), list) else []
        first = f": {'the first at' if cut > len(at) else 'at'} {', '.join(at)}" if at else ""
        noun = "pair" if d.get("pairs") else "row"  # dpo's and reward's pairs are cut as one
        parts.append(f"<h3>Truncated rows</h3><p>{esc(counted(cut, noun))} cut to max_length and kept{esc(first)}.</p>")
    if unread.get("rows"):
        parts.append(f"<h3>Characters the tokenizer drops</h3><p>{esc(Unread.saved(unread).line().strip())}.</p>")
    notes = d.get("notes") or []
    if notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{esc(note)}</li>" for note in notes) + "</ul>")
    return "".join(parts)
