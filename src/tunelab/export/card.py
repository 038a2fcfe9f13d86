"""The model cards an export writes: README.md in a merged folder, NAME.README.md beside a GGUF file (NAME.gguf), and
the README.md of an adapter that `tunelab push` sends to the hub (`adapter_card`, with the run's losses and scores).

Both say what the model is (its base by `shared_name`, the method and task), how it is prompted (the run's template,
with its system prompt where a conversation brings none), that it answers greedily as tunelab evaluated it (and the
sampling its base's generation_config set instead), how to run it, and what the export measured (the merge check,
the GGUF self-check). Only a hub base is named in the metadata (`base_model`, which the hub links); a local one by
its folder's or file's name in the text, never the user's absolute path; `base_model_relation: finetune` says what
the hub would otherwise guess from the files (a GGUF beside a base reads as a mere quantization of it). A staged
run's merged model is a fine-tune of stage 1's base, whatever its last stage trained over (stage-1/merged after
continue: merge): the cards of the merge and the GGUF export name that base and list the stages. The card of a
staged run's adapter, pushed where every stage trained that adapter on over the original base, lists them too. An
adapter started from its weight (method.init pissa or olora) is said so, with what it is saved as (a plain LoRA of
rank 2r over the original base); over an NF4 base (QPiSSA), that it trained over the quantized residual, and that it
belongs over the original 16-bit base, unquantized.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from transformers import GenerationConfig

from tunelab.config.model import EMBEDDED
from tunelab.errors import counted
from tunelab.export.modelfile import ollama_name
from tunelab.infer.generate import NOT_APPLIED, REPLACED
from tunelab.run_info import ADAPTER_METHODS, RunInfo

CARD = "README.md"


def gguf_card_path(gguf: Path) -> Path:
    """The card of the GGUF file `gguf`: `NAME.README.md` beside `NAME.gguf`, so that exports into one folder each
    keep their own, as their Modelfiles do (rename it README.md to make it a hub repository's card)."""
    return gguf.with_name(f"{gguf.stem}.{CARD}")


def shared_name(base_model: str) -> str:
    """The base model's name as a file others receive names it: a local folder or .gguf file (recorded as its
    absolute path) by its own name, so the file does not carry the user's directory layout; an alias or hub id as
    written."""
    path = Path(base_model)
    if not path.is_absolute():
        return base_model
    return path.stem if path.suffix.lower() == ".gguf" else path.name


def base_sampling(gen: GenerationConfig | None) -> dict:
    """{setting: value} of the decoding settings a base's generation_config sets that tunelab replaces or does not
    apply (do_sample, temperature, ..., min_p, no_repeat_ngram_size: infer/generate.py's REPLACED and NOT_APPLIED),
    leaving out those at the value that changes nothing."""
    if gen is None:
        return {}
    neutral = NOT_APPLIED | {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0}
    return {k: v for k, v in gen.to_diff_dict().items() if k in (*REPLACED, *NOT_APPLIED) and v != neutral.get(k, ())}


def card_head(library: str) -> str:
    """How a card tunelab writes begins (an export replaces only a card that begins so)."""
    return f"---\nlibrary_name: {library}\ntags:\n- tunelab\n"


def _front(
    info: RunInfo, library: str, tags: tuple[str, ...] = (), relation: str = "finetune", start: RunInfo | None = None
) -> list[str]:
    """The metadata: the methods the run trained with (every stage's) and, for a hub base, that base: `start`'s where
    given (stage 1's run of a staged run, `rundir.start_info`), else the run's own."""
    origin = start or info
    base = shared_name(str(origin.base_model))
    methods = dict.fromkeys([*(s["method"] for s in _stages(info) if isinstance(s.get("method"), str)), info.method])
    lines = [*card_head(library).splitlines(), *(f"- {m}" for m in methods), *(f"- {t}" for t in tags)]
    if origin.base_source == "hub":  # the hub links to it; said a fine-tune (it would take a GGUF for a quantization)
        lines += [f"base_model: {json.dumps(base)}", f"base_model_relation: {relation}"]
    return [*lines, "---", ""]


def _stages(info: RunInfo) -> list[dict]:
    """run.json's extra.stages of a staged run (each stage's name, task, method, steps, continue and data); empty for
    a run of one stage, or where the record is not a list of stages."""
    stages = info.extra.get("stages")
    if not isinstance(stages, list) or len(stages) < 2 or not all(isinstance(s, dict) for s in stages):
        return []
    return stages


def _trained(info: RunInfo) -> str:
    """How the run trained, after "fine-tuned with tunelab": its method and task, or for a staged run how many
    stages (`_stage_lines` lists them)."""
    n = len(_stages(info))
    return f"in {n} stages" if n else f"({_method(info)}, task {info.task})"


def _stage_lines(info: RunInfo) -> list[str]:
    """A staged run's stages, one line each: its name, method, task, steps and data (its sources' names), and what it
    started from; nothing for a run of one stage."""
    stages = _stages(info)
    lines = []
    for k, stage in enumerate(stages, 1):
        method = _method(info) if k == len(stages) else str(stage.get("method"))
        steps = stage.get("steps")
        data = stage.get("data") if isinstance(stage.get("data"), list) else []  # runs before 2026-12-06 have none
        said = [method, f"task {stage.get('task')}", *([counted(steps, "step")] if isinstance(steps, int) else [])]
        said += [f"data {', '.join(f'`{name}`' for name in data)}"] if data else []
        before = str(stages[k - 2].get("method")) if k > 1 else None
        if k > 1 and before not in ADAPTER_METHODS:
            said.append(f"over the weights stage {k - 1} trained ({before})")
        elif k > 1 and stage.get("continue") == "merge":
            said.append(f"over stage {k - 1}'s adapter merged into the base (continue: merge)")
        elif k > 1:
            said.append(f"training stage {k - 1}'s adapter on")
        lines.append(f"{k}. `{stage.get('name')}`: {', '.join(said)}")
    return ["", *lines] if lines else []


def _prompting(info: RunInfo, where: str) -> list[str]:
    """How it is prompted: `where` names what holds the chat template, with its verb ("Its tokenizer's chat template
    writes")."""
    quoted = "\n".join(f"> {line}" for line in (info.system_prompt or "").splitlines())
    system = (
        f"conversations that bring no system message get the system prompt it was trained with:\n\n{quoted}\n"
        if info.system_prompt
        else "it was trained without a system prompt of its own.\n"
    )
    return [f"{where} prompts as training wrote them (template `{info.template}`); {system}"]


def _sampled(base_generation: GenerationConfig | None, how: str) -> list[str]:
    """The sampling the base's generation_config set, which the export does not apply, with `how` (a format string
    of `{args}`) to sample as it did; nothing where the base answers greedily."""
    dropped = base_sampling(base_generation)
    if not dropped.get("do_sample"):
        return []
    args = ", ".join(f"{k}={v!r}" for k, v in dropped.items())
    return [f"The base model's `generation_config.json` sampled instead; {how.format(args=args)} samples as it did."]


def model_card(
    info: RunInfo,
    name: str,
    base_generation: GenerationConfig | None,
    check: str | None,
    start: RunInfo | None = None,
) -> str:
    """The README.md of the merged folder `name` (a Hugging Face model card), with a transformers example that runs
    as written; `check` is the merge check's line (MergeCheck.describe), None where nothing was folded. `start`:
    stage 1's run of a staged run (`rundir.start_info`), whose base it names: the last stage's (stage-1/merged after
    continue: merge) is a folder inside the run, and the merged weights a fine-tune of stage 1's base."""
    base = shared_name(str((start or info).base_model))
    lines = [
        *_front(info, "transformers", start=start),
        f"# {name}",
        "",
        f"`{base}` fine-tuned with tunelab {_trained(info)} and merged into plain weights: it loads",
        "without tunelab, PEFT or the base model.",
        *_stage_lines(info),
        *_merged_start(info),
        "",
        *_prompting(info, "Its tokenizer's chat template writes"),
        "Its `generation_config.json` answers greedily, stopping at the end-of-turn tokens it was trained with: as",
        "`tunelab eval`, `chat`, `generate` and `serve` answered it.",
        *_sampled(base_generation, "`model.generate(..., {args})`"),
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        'messages = [{"role": "user", "content": "Hello!"}]',
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)',
        "out = model.generate(**inputs, max_new_tokens=128)",
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
        "```",
    ]
    return "\n".join(lines) + "\n" + (f"\n{check[0].upper()}{check[1:]}.\n" if check else "")


_MODELFILE_PARTS = (("TEMPLATE", "template"), ("", "stop tokens"), ("", "sampling"), ("SYSTEM", "system prompt"))


def gguf_card(
    info: RunInfo,
    gguf: Path,
    qtype: str,
    modelfile: Path,
    base_generation: GenerationConfig | None,
    check: str | None,
    missing: dict[str, str] | None = None,
    start: RunInfo | None = None,
    unchecked: str = "",
) -> str:
    """NAME.README.md beside the GGUF file `gguf`: what it is, its quantization, how llama.cpp and Ollama run it (as
    the Modelfile `modelfile` beside it sets; `missing`: {TEMPLATE or SYSTEM: why} for what it leaves out, from
    modelfile.left_out), and the self-check's printed verdict (`check`; None: not run, for the reason `unchecked`
    gives: skipped on request, or llama.cpp missing). `start`: as model_card's."""
    missing = missing or {}
    held = [what for key, what in _MODELFILE_PARTS if key not in missing]
    absent = [f"It has no {key}: {why}" for key, why in missing.items()]
    base = shared_name(str((start or info).base_model))
    name, ollama = gguf.stem, ollama_name(gguf)
    verdict = (
        [
            "The export's self-check with llama.cpp (every number in `" + f"{name}.check.json`):",
            "",
            "```text",
            check,
            "```",
        ]
        if check
        else [f"The export's self-check did not run: {unchecked or 'no reason was recorded'}."]
    )
    lines = [
        *_front(info, "gguf", ("gguf", qtype), start=start),
        f"# {name}",
        "",
        f"`{base}` fine-tuned with tunelab {_trained(info)}, merged and written as one GGUF file,",
        f"`{gguf.name}`, in `{qtype}`, for llama.cpp, Ollama and LM Studio.",
        *_stage_lines(info),
        *_merged_start(info),
        "",
        *_prompting(info, "The file's chat template (`tokenizer.chat_template`) and the Modelfile's TEMPLATE write"),
        "It answers greedily, with no repetition penalty, as `tunelab eval`, `chat`, `generate` and `serve` answered",
        "it; the Modelfile sets so, and the file's `general.sampling.temp` 0 makes it llama.cpp's default.",
        *_sampled(base_generation, "`{args}`"),
        "",
        "llama.cpp (`--jinja` prompts with the file's chat template, the system prompt included):",
        "",
        "```bash",
        f"llama-cli -m {shlex.quote(gguf.name)} --jinja -cnv --temp 0",
        f"llama-server -m {shlex.quote(gguf.name)} --jinja --temp 0",
        "```",
        "",
        f"Ollama (`{modelfile.name}` holds the {', '.join(held[:-1])} and {held[-1]}):",
        *(["", *absent] if absent else []),
        "",
        "```bash",
        f"ollama create {ollama} -f {shlex.quote(modelfile.name)}",
        f"ollama run {ollama}",
        "```",
        "",
        *verdict,
    ]
    return "\n".join(lines) + "\n"


def _evaluated(evaluated: dict | None) -> list[str]:
    """The loss of base and tuned in eval.json (`tunelab eval`), where the run has one."""
    if not isinstance(evaluated, dict):
        return []
    losses = [(evaluated.get(m) or {}).get("eval_loss") for m in ("base", "tuned")]
    if not all(isinstance(x, int | float) for x in losses):
        return []
    data = Path(str(evaluated.get("data_file", ""))).name
    on = evaluated.get("loss_on", "answers")
    return ["", f"`tunelab eval` on `{data}`: loss on {on} {losses[0]:.4g} (base), {losses[1]:.4g} (tuned)."]


def _results(info: RunInfo, scores: dict | None, evaluated: dict | None = None) -> list[str]:
    """What the run measured: its run.json's losses, compare.json's scores of base and tuned and eval.json's losses
    where it has them."""
    losses = [f"{info.steps} steps"]
    if info.final_loss is not None:
        losses.append(f"last train loss {info.final_loss:.4g}")
    if info.eval_loss is not None:
        losses.append(f"eval loss {info.eval_loss:.4g}")
    lines = ["## Results", "", f"Training: {', '.join(losses)}.", *_evaluated(evaluated)]
    rows = [(kind, e) for kind, e in (scores or {}).items() if isinstance(e, dict)]
    if rows:
        lines += [
            "",
            "`tunelab compare` (share of answers that hold the expected text; refusals where it counts them):",
        ]
        lines += ["", "| questions | n | base | tuned | base refused | tuned refused |", "|---|---|---|---|---|---|"]
        for kind, e in rows:
            cells = [e.get(k) for k in ("base", "tuned", "base_refused", "tuned_refused")]
            shown = ["" if not isinstance(c, int | float) else f"{100 * c:.1f}%" for c in cells]
            lines.append(f"| {kind} | {e.get('n', '')} | " + " | ".join(shown) + " |")
    return [*lines, ""]


_ADAPTER_NAMES = {"lora": "LoRA", "dora": "DoRA"}


def _method(info: RunInfo) -> str:
    """The run's method as a card names it: with how its adapter started (method.init) and rsLoRA where set."""
    return ", ".join(
        [info.method, *([f"init {info.init}"] if info.init != "default" else []), *(["rsLoRA"] * info.rslora)]
    )


_STARTS = {
    "pissa": ("the top-r singular vectors of each adapted weight, its principal components", "PiSSA"),
    "olora": ("the first r columns of each adapted weight's QR decomposition", "OLoRA"),
}


def _started(info: RunInfo, subject: str = "It") -> str:
    """How an adapter started from its weight (method.init pissa or olora, peft/weight_init.py) began, and over what
    base it trained: the rest of the weight, or with method.quantize_base nf4 (QPiSSA) that rest quantized to NF4.
    `subject`: what the sentence says started ("It", "Its adapter")."""
    how, name = _STARTS.get(info.init, ("part of each adapted weight", info.init))
    source = f"{how} ({name}, method.init {info.init})"
    if info.quantize_base != "nf4":
        return f"{subject} started from {source}, the base keeping the rest of each weight"
    return (
        f"{subject} started, in 16 bits, from {source}, over the rest of each weight quantized to NF4 (QPiSSA: "
        "method.quantize_base nf4, the residual quantized, not the weight)"
    )


def _merged_start(info: RunInfo) -> list[str]:
    """What the merge of an adapter started from its weight folded: the trained change over the original weights;
    with an NF4 residual (QPiSSA), over the 16-bit weights, which training did not see as they are."""
    if info.init == "default" or not info.is_adapter:
        return []
    over = "the original base" if info.quantize_base != "nf4" else "the original 16-bit base, not an NF4 one"
    lines = [f"{_started(info, 'Its adapter')}; the merge folded the plain LoRA of rank 2r it is saved as into {over}."]
    if info.quantize_base == "nf4":
        lines.append("The merged model differs from the one training ran by the residual's NF4 rounding error only.")
    return ["", *lines]


def _saved_rank(info: RunInfo, rank: int | None) -> list[str]:
    """What an adapter started from its weight (method.init pissa or olora) is as saved: a plain LoRA of twice the
    rank it trained at, over the original base (peft/weight_init.py); a QPiSSA one over the original 16-bit base,
    where it answers nearly, not exactly, as tunelab evaluated it."""
    if info.init == "default":
        return []
    size = f"rank {rank} (`r` in `adapter_config.json`)" if rank else "twice the rank it trained at"
    if info.quantize_base != "nf4":
        return [
            f"{_started(info)}; it is saved, as PEFT converts such an adapter, as a plain LoRA of {size} over the",
            "original base, so it loads as any LoRA does.",
            "",
        ]
    return [
        f"{_started(info)}. It is saved, as PEFT converts such an adapter, as a plain LoRA of {size} over the",
        "original 16-bit base: load that base unquantized (not in 4 bits), and it loads as any LoRA does. There it",
        "answers nearly, not exactly, as tunelab evaluated it: off by the residual's NF4 rounding error only.",
        "",
    ]


def adapter_card(
    info: RunInfo, repo: str, scores: dict | None = None, evaluated: dict | None = None, rank: int | None = None
) -> str:
    """The README.md of an adapter pushed to the hub repository `repo` (OWNER/NAME): its base (in the metadata only
    where the base is a hub id, as `base_model_relation: adapter`), how it is prompted, what the run measured
    (`scores`: compare.json's; `evaluated`: eval.json; None where the run has none), its rank as saved (`rank`:
    adapter_config.json's r) where that is not the rank it trained at, and a PEFT example that loads it from
    `repo`. A staged run's card lists its stages, as the merge's does; one whose last stage trained over weights
    earlier stages changed is refused before (push.py `collect`): its adapter alone, on the base it names, is another
    model."""
    base = shared_name(str(info.base_model))
    hub = info.base_source == "hub"
    staged = len(_stages(info))
    trained = f"in {staged} stages" if staged else f"(task {info.task}{', rsLoRA' * info.rslora})"
    qlora = (
        [
            "It was trained over the base quantized to NF4 (QLoRA); over the 16-bit base it answers nearly, not exactly,",
            "as tunelab evaluated it.",
            "",
        ]
        if info.nf4_again
        else []
    )
    if hub:
        load = [
            "```python",
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
            'messages = [{"role": "user", "content": "Hello!"}]',
            'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)',
            "out = model.generate(**inputs, max_new_tokens=128)",
            'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
            "```",
        ]
    else:
        where = (
            f"tunelab's name for the model in the pip package {EMBEDDED[base][0]}"
            if info.base_source == "alias" and base in EMBEDDED
            else "a model on the machine it was trained on"
        )
        load = [
            f"Its base, `{base}`, is not on the hub ({where}), so `adapter_config.json` names it by that name only:",
            f'load that base yourself and put the adapter on it with `peft.PeftModel.from_pretrained(base, "{repo}")`.',
        ]
    lines = [
        *_front(info, "peft", relation="adapter"),
        f"# {repo.split('/')[-1]}",
        "",
        f"A {_ADAPTER_NAMES.get(info.method, info.method)} adapter of `{base}`, trained with tunelab {trained}.",
        *_stage_lines(info),
        "",
        *_saved_rank(info, rank),
        *qlora,
        *_prompting(info, "The tokenizer's chat template writes"),
        *_results(info, scores, evaluated),
        *load,
    ]
    return "\n".join(lines) + "\n"
