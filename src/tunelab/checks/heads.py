"""`tunelab check` for the tasks whose rows are not sft text: the head tasks (classify, reward) and the preference
pairs of dpo: what their rows hold, before any training.

Reading the data (`task.build_data`) already refuses what cannot train, with the file, line and field: a row without
an input, a label missing or empty, a single class, no usable pair. Those are bad input (exit 2), as in train. The
items here report what does train but deserves a look:

- labels (classify): the label set with each label's rows; a warning when the smallest class has under a tenth of
  the largest's rows (classify.class_weights: balanced evens their weight);
- eval labels (classify): eval rows whose label training never saw, counted and skipped from the eval metrics;
- pairs (reward, dpo): the pairs used, and those skipped, by reason (chosen equals rejected, a side is empty, a
  chat that sft skips), with where;
- lengths: tokens per input (per side of a pair) against data.max_length, with the inputs cut (truncate) or dropped
  (drop);
- head input: the first training input as the head reads it (classify.prompt_format applied) and the token it pools.

With the model, one forward and backward of the first micro-batch through the head: its loss and gradients must be
finite, and a classifier's untrained head should start near ln(K) for K labels (its logits are close to 0). For dpo
the reference log-probs of that micro-batch are computed as training computes them, and before the first update the
policy is its reference: the sigmoid loss must be ln 2 = 0.693 (margin 0), or the reference and the policy disagree
(a warning: the adapters do not start at zero, or the two forwards differ). dpo.loss kto: the rows used by label
(`feedback_item`), and a first loss of half the mean row weight (r = z0 = 0), checked alike.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from tunelab.checks.model import dtype_items, task_step, untrained_item
from tunelab.config import RunConfig
from tunelab.data.batches import epoch_chunks
from tunelab.data.checks import CheckItem
from tunelab.data.loader import epoch_rows
from tunelab.data.render import IGNORE
from tunelab.data.report import location
from tunelab.errors import counted
from tunelab.run_info import RunInfo
from tunelab.tasks import get_task
from tunelab.tasks.classify import UNSEEN
from tunelab.tasks.pair_data import EMPTY_ANSWER, SAME
from tunelab.training.initial_factors import KeptFactors
from tunelab.training.prepare import Inputs, load_model

HEAD_TASKS = ("classify", "reward")
CHECKED_TASKS = (*HEAD_TASKS, "dpo")  # the tasks this module checks (sft: checks/run.py and data/checks.py)
REFERENCE_TOLERANCE = 1e-3  # |first sigmoid dpo loss - ln 2| beyond this: the policy is not its reference
IMBALANCE = 10  # warn when the largest class has more than this many times the rows of the smallest
SHOWN = 5  # locations listed per skip reason


def _skips(inputs: Inputs, match) -> tuple[int, list[str]]:
    """Rows skipped for the reasons `match` accepts: their count and their first locations."""
    count, where = 0, []
    for reason, skip in inputs.data.report.skips.items():
        if match(reason):
            count += skip.count
            where += skip.locations
    return count, where[:SHOWN]


def label_items(inputs: Inputs) -> list[CheckItem]:
    counts = inputs.data.facts["label_counts"]
    shown = [f"{label}: {counted(n, 'row')}" for label, n in counts.items()]
    items = [CheckItem("labels", "info", f"{len(counts)} labels in the training rows", shown)]
    smallest, largest = min(counts, key=counts.get), max(counts, key=counts.get)
    if counts[largest] > IMBALANCE * counts[smallest]:
        items.append(
            CheckItem(
                "class balance",
                "warn",
                f"{largest} has {counts[largest]} rows, {smallest} {counts[smallest]}: a head trained on this mostly "
                "learns the large classes; classify.class_weights: balanced weighs each class alike",
            )
        )
    unseen, where = _skips(inputs, lambda reason: reason.startswith(UNSEEN))
    if not unseen and not inputs.data.eval:  # "every eval row's label" of no eval row read as a passed check
        items.append(CheckItem("eval labels", "info", "no eval split (data.eval or data.eval_fraction): not checked"))
        return items
    status = "warn" if unseen else "pass"
    summary = (
        f"{counted(unseen, 'eval row')} {'has' if unseen == 1 else 'have'} a label the training rows do not: "
        "skipped from the eval metrics"
        if unseen
        else "every eval row's label is among the training labels"
    )
    items.append(CheckItem("eval labels", status, summary, where))
    return items


def pair_items(inputs: Inputs) -> list[CheckItem]:
    """The pairs used and those skipped, by reason; those dropped as too long are the lengths item's."""
    report = inputs.data.report
    same, same_where = _skips(inputs, lambda reason: reason.startswith(SAME))
    empty, empty_where = _skips(inputs, lambda reason: reason == EMPTY_ANSWER)
    used = report.train.used + report.eval.used
    details = [f"chosen = rejected: {same} ({', '.join(same_where)})"] if same else []
    details += [f"an empty side: {empty} ({', '.join(empty_where)})"] if empty else []
    skipped = same + empty
    for reason, skip in report.skips.items():  # the rest: a chat sft skips, an answer lost in rendering
        if not reason.startswith((SAME, EMPTY_ANSWER, "longer than max_length")):
            details.append(f"{reason}: {skip.count} ({', '.join(skip.locations[:SHOWN])})")
            skipped += skip.count
    status = "warn" if skipped else "pass"
    long, _ = _skips(inputs, lambda reason: reason.startswith("longer than max_length"))
    other = " other" if long else ""
    split = f" ({report.train.used} training, {report.eval.used} eval)" if report.eval.used else ""
    summary = f"{used} pairs used{split}" + (f"; {skipped}{other} skipped" if skipped else f"; none{other} skipped")
    summary += f" ({long} too long: see lengths)" if long else ""
    return [CheckItem("pairs", status, summary, details)]


def feedback_item(inputs: Inputs) -> CheckItem:
    """dpo.loss kto: the rows used, the training rows by label, and those skipped, by reason (those dropped as too
    long are the lengths item's: counted here, detailed there)."""
    report, train = inputs.data.report, inputs.data.train
    good = sum(r.desirable for r in train)
    skips = [(reason, s) for reason, s in report.skips.items() if not reason.startswith("longer than max_length")]
    details = [f"{reason}: {s.count} ({', '.join(s.locations[:SHOWN])})" for reason, s in skips]
    skipped = sum(s.count for _, s in skips)
    split = f", {report.eval.used} eval" if report.eval.used else ""
    summary = f"{report.train.used} training rows used ({good} desirable, {len(train) - good} undesirable){split}"
    long, _ = _skips(inputs, lambda reason: reason.startswith("longer than max_length"))
    other = " other" if long else ""
    summary += f"; {skipped}{other} skipped" if skipped else f"; none{other} skipped"
    summary += f" ({long} too long: see lengths)" if long else ""
    one_label = not good or good == len(train)
    if one_label:
        details.append("one label only: kto pushes one way only (the data report's note)")
    return CheckItem("feedback rows", "warn" if skipped or one_label else "pass", summary, details)


def length_item(cfg: RunConfig, inputs: Inputs) -> CheckItem:
    report = inputs.data.report
    s = report.lengths
    dropped, where = _skips(inputs, lambda reason: reason.startswith("longer than max_length"))
    cut = report.total_truncated
    per = "side (chosen or rejected)" if report.pairs else "input"
    bounded = f"; {s.bounds_note('pair side' if report.pairs else 'input')}" if s.at_least else ""
    summary = (
        f"tokens per {per}: min {s.min}, median {s.median}, p95 {s.p95}, max {s.max} (data.max_length "
        f"{cfg.data.max_length}{bounded})"
    )
    if not dropped and not cut:
        return CheckItem("lengths", "pass", summary + "; none over it")
    # dpo keeps a pair's prompt and the start of its answers; a head an input's start (BOS, system prompt, header)
    kept = "their first" if cfg.task == "dpo" else "their start and last tokens, in all"
    details = [f"cut to {kept} {cfg.data.max_length} tokens: {cut}"] if cut else []
    details += [f"dropped (data.overlong drop): {dropped} ({', '.join(where)})"] if dropped else []
    return CheckItem("lengths", "warn", summary, details)


def head_input_item(cfg: RunConfig, inputs: Inputs) -> CheckItem:
    """The first training input decoded as the head reads it, and its pooled (last) token."""
    row = inputs.data.train[0]
    ids = row.input_ids if cfg.task == "classify" else row.chosen_ids
    decode = inputs.tokenizer.decode
    fmt = cfg.classify.prompt_format
    how = f"classify.prompt_format {fmt!r}" if fmt else "no classify.prompt_format"
    return CheckItem(
        "head input",
        "info",
        f"{how}; the head reads the last token, {decode(ids[-1:], skip_special_tokens=False)!r}",
        [f"{location(row.path, row.line)}: {decode(ids, skip_special_tokens=False)!r} ({len(ids)} tokens)"],
    )


def head_data_checks(cfg: RunConfig, inputs: Inputs) -> list[CheckItem]:
    """The data items of a classify, reward or dpo run."""
    if cfg.task == "dpo":
        first = [feedback_item(inputs)] if cfg.dpo.loss == "kto" else pair_items(inputs)
        return [*first, length_item(cfg, inputs)]
    items = label_items(inputs) if cfg.task == "classify" else pair_items(inputs)
    return [*items, length_item(cfg, inputs), head_input_item(cfg, inputs)]


def head_model_items(
    cfg: RunConfig, inputs: Inputs, resumed: RunInfo | None = None, start: KeptFactors | None = None
) -> list[CheckItem]:
    """One forward/backward of the first micro-batch through the head (or dpo's loss), as the first training step
    takes it; `resumed`: the run.json of the run --resume continues, `start` its kept A0, B0."""
    task = get_task(cfg.task, cfg)
    built, untrained = load_model(cfg, inputs, resumed=resumed, start=start)
    micro = cfg.train.micro_batch  # resolved from auto by the caller
    t = cfg.train  # the rows of training's first micro-batch: epoch 0's order, as training/loop.py draws it
    rows = epoch_chunks(epoch_rows(inputs.data, t.seed, 0), micro, shuffle=cfg.data.shuffle, seed=t.seed, epoch=0)[0]
    # dpo caches the reference log-probs of the rows it is given: those of this micro-batch, not the whole set
    task.prepare(
        built, dataclasses.replace(inputs.data, train=rows, eval=[]) if cfg.task == "dpo" else inputs.data, cfg
    )
    batch = task.make_batches(rows, micro, inputs.tokenizer.pad_token_id, shuffle=False, seed=0, epoch=0)[0]
    batch = {k: (v.to(built.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    value, finite = task_step(task, built.model, batch)
    name = "forward/backward (dpo)" if cfg.task == "dpo" else "forward/backward (head)"
    if not finite:
        return [
            *dtype_items(built),
            CheckItem(name, "fail", f"the loss ({value:g}) or a gradient is not finite on the first batch"),
        ]
    untrained_check = untrained_item(untrained)
    start = _start_loss(cfg, rows)
    if start is not None:
        want, said = start
        off = abs(value - want) > REFERENCE_TOLERANCE
        text = f"first micro-batch: loss {value:.4f}, gradients finite; before any update the policy is its reference"
        if off:
            text += f", so the loss should be {said} = {want:.4f}: the policy and the reference disagree"
        return [
            *dtype_items(built),
            untrained_check,
            CheckItem(name, "warn" if off else "pass", text + ("" if off else f" ({said})")),
        ]
    expected = ""
    if cfg.task == "classify":
        k = len(inputs.data.facts["labels"])
        expected = f" (an untrained head of {k} labels starts near ln {k} = {math.log(k):.3f})"
    return [
        *dtype_items(built),
        untrained_check,
        CheckItem(name, "pass", f"first micro-batch: loss {value:.4f}{expected}, gradients finite"),
    ]


def _start_loss(cfg: RunConfig, rows: list) -> tuple[float, str] | None:
    """The loss of the first micro-batch `rows` while the policy is its reference, and how to say it: dpo's sigmoid
    loss ln 2 (margin 0), kto's half the rows' mean weight (r = z0 = 0); None for the losses that read no reference
    or whose start depends on the answers."""
    if cfg.task != "dpo":
        return None
    if cfg.dpo.loss == "sigmoid" and cfg.dpo.label_smoothing == 0:
        return math.log(2), "ln 2"
    if cfg.dpo.loss == "kto":
        d = cfg.dpo
        weights = [d.desirable_weight if r.desirable else d.undesirable_weight for r in rows]
        return sum(weights) / (2 * len(weights)), "half the rows' mean weight"
    return None


def head_preview(cfg: RunConfig, inputs: Inputs, examples: int) -> str:
    """The first training rows as the head reads them: the decoded input, then its label (classify)."""
    data, decode = inputs.data, inputs.tokenizer.decode
    labels = data.facts.get("labels")
    reader = "dpo scores them" if cfg.task == "dpo" else "the head reads them"
    lines = [f"preview of the first {min(examples, len(data.train))} training rows as {reader}:"]
    for row in data.train[:examples]:
        if cfg.task == "classify":
            lines.append(f"  {location(row.path, row.line)}: {decode(row.input_ids)!r} -> {labels[row.label]}")
            continue
        where = location(row.path, row.line)
        pad = " " * len(where)
        if cfg.task == "dpo" and cfg.dpo.loss == "kto" and (parts := _shared_prompt(row)):
            prompt, own, other = parts
            lines.append(f"  {where}: prompt     {decode(prompt)!r}")
            lines.append(f"  {pad}  completion {decode(own)!r} ({'desirable' if row.desirable else 'undesirable'})")
            lines.append(f"  {pad}  for z0     {decode(other)!r} (another row's completion: the KL estimate's)")
            continue
        if cfg.task == "dpo" and (parts := _shared_prompt(row)):  # the prompt once: the answers are what differs
            prompt, chosen, rejected = parts
            lines.append(f"  {where}: prompt   {decode(prompt)!r}")
            lines.append(f"  {pad}  chosen   {decode(chosen)!r}")
            lines.append(f"  {pad}  rejected {decode(rejected)!r}")
            continue
        lines.append(f"  {where}: chosen {decode(row.chosen_ids)!r}")
        lines.append(f"  {pad}  rejected {decode(row.rejected_ids)!r}")
    return "\n".join(lines)


def _shared_prompt(row) -> tuple[list[int], list[int], list[int]] | None:
    """A dpo pair's prompt tokens (those before each side's first labelled token, the same on both sides) and the
    two answers after it; None where the sides' prompts differ. Whole transcripts (HH-RLHF) share a long start, and
    shown whole the two sides read alike for hundreds of characters before the answers that differ."""
    starts = [
        next((i for i, t in enumerate(labels) if t != IGNORE), len(labels))
        for labels in (row.chosen_labels, row.rejected_labels)
    ]
    if row.chosen_ids[: starts[0]] != row.rejected_ids[: starts[1]]:
        return None
    return row.chosen_ids[: starts[0]], row.chosen_ids[starts[0] :], row.rejected_ids[starts[1] :]
