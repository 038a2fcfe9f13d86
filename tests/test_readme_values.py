"""README: the values it states (defaults, thresholds, lists of choices, printed lines) are the code's."""

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from tunelab.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_verdict_thresholds_the_readme_states_are_the_codes():
    """The README said the eval loss counts as still falling when its lowest is 10% below the evaluation before; the
    verdict also asks 0.02 nats, which it left out (as a reader of a loss of 0.05 could not tell that 10% of it is
    not enough)."""
    from tunelab.training import verdict as v

    said = " ".join(README[README.index("Diverged, judged first") :].split("\n\n")[0].split())
    for stated in [
        f"{v.DIVERGED_RELATIVE:.0%} (and {v.DIVERGED_ABSOLUTE:g} nats) above where it started",
        f"at or above {v.HIGH_LOSS:g} nats a token",
        f"fell by {v.FALLING_RELATIVE:.0%} (and {v.FALLING_ABSOLUTE:g} nats) over the last quarter",
        f"{v.EVAL_FALLING_RELATIVE:.0%} (and {v.EVAL_FALLING_ABSOLUTE:g} nats) below the evaluation before",
        f"{v.RISE_RELATIVE:.0%} (and {v.RISE_ABSOLUTE:g} nats) above its lowest",
        f"did not move by {v.REWARD_MOVE:g} from the first tenth",
        f"fell {v.REWARD_FALL:g} below its highest",
    ]:
        assert stated in said, stated


def test_the_heads_section_names_every_method_a_head_trains():
    """The heads' section said `method` is lora, full or layers; a head run trains DoRA adapters too (method.name
    dora, saved in PEFT's layout with the head), which it left out."""
    from tunelab.config.model import MethodConfig

    said = README[README.index("## Classification heads") :].split("`method` is ")[1].split(", with")[0]
    for method in MethodConfig.__dataclass_fields__["name"].metadata["choices"]:
        assert f"`{method}`" in said, method


def test_the_auto_rules_the_readme_tabulates_are_the_codes():
    """The table of Defaults that learn states the numbers of training/auto.py's rules; each is its constant's."""
    from tunelab.training import auto as a

    rows = {
        row.split(" | ")[0].strip("| `"): " ".join(row.split(" | ")[1].split())
        for row in README[README.index("| option | rule |") :].split("\n\n")[0].splitlines()[2:]
    }
    lo, hi = (f"{x:.0e}".replace("e-0", "e-") for x in a.LR_RANGE)  # 1e-5, as the README writes it
    base = f"{a.LORA_LR_AT_2000:.0e}".replace("e-0", "e-")
    stated = {
        "train.lr": [
            f"{base} x (2000 / hidden size)^{a.LR_EXPONENT:g} x {a.REFERENCE_ALPHA:g} / alpha",
            f"kept within {lo}..{hi}",
            {10: "a tenth of LoRA's"}[a.LORA_OVER_FULL],
            {40: "a fortieth of the above"}[a.PREFERENCE_DIVISOR],
            {4: "with `dpo.loss: orpo`, a quarter"}[a.ORPO_DIVISOR],
        ],
        "train.micro_batch": [
            f"{a.MICRO_BATCH}; for a set of fewer than {a.MICRO_BATCH * a.STEPS_PER_EPOCH} rows",
            f"the power of two <= rows / {a.STEPS_PER_EPOCH}",
            f"about {a.STEPS_PER_EPOCH} optimizer steps",
            f"at most {a.MICRO_BATCH} a forward",
        ],
        "train.epochs": [
            f"{a.TARGET_EPOCHS}; if that is fewer than {a.MIN_STEPS} optimizer steps",
            f"(at most {a.MAX_EPOCHS})",
            f"more than {a.MAX_EXAMPLES_SEEN:,} examples, {a.MAX_EXAMPLES_SEEN:,} / rows",
        ],
        "train.warmup_ratio": [f"{a.WARMUP_RATIO:.0%} of the steps, at most {a.MAX_WARMUP_STEPS} steps"],
        "train.eval_every": [
            f"at most {a.EVALS_PER_RUN} evaluations a run (every ceil(steps / {a.EVALS_PER_RUN})",
            f"every step of a run of {a.EVALS_PER_RUN} steps or fewer",
        ],
    }
    assert set(stated) == set(rows), rows.keys()
    for option, parts in stated.items():
        for part in parts:
            assert part in rows[option], (option, part)


def test_the_count_of_options_left_out_the_readme_quotes_is_a_default_runs():
    """The README quoted `... and 35 options at their defaults that this run does not read: method.top_layers,
    classify.* (5), ...`; a plain sft LoRA run leaves out 36 since the options grew, and prints that."""
    from tunelab.config.render import describe

    quoted = " ".join(README[README.index("(`... and ") + 2 :].split("`")[0].split()).removesuffix(" ...")
    printed = next(line.strip() for line in describe(load_config(None)).splitlines() if "... and" in line)
    assert printed.startswith(quoted), (quoted, printed)


def test_the_install_section_names_every_dependency_and_extra():
    """`pip install -e .`'s comment lists what it pulls, and the next paragraph the optional extras: both as
    pyproject.toml declares them."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    install = README[README.index("## Install") : README.index("## Train")]
    pulls = install.split("pip install -e .")[1].split("\n")[0]
    for requirement in project["dependencies"]:
        assert re.match(r"[\w-]+", requirement)[0] in pulls, requirement
    extras = " ".join(install[install.index("Optional extras") :].split("\n\n")[0].split())
    for extra in project["optional-dependencies"]:
        assert f"`{extra}`" in extras, extra


def _field_choices(section: str, name: str) -> tuple[str, ...]:
    from tunelab.config.run import RunConfig

    config = RunConfig.__dataclass_fields__[section].default_factory
    return config.__dataclass_fields__[name].metadata["choices"]


def _flag_choices(command: str, flag: str) -> tuple[str, ...]:
    import argparse

    from tunelab.cli_parser import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return next(a.choices for a in commands[command]._actions if flag in a.option_strings)


@pytest.mark.parametrize(
    "start, end, choices",
    [
        ("`model.dtype` is ", " fp16 trains adapters", lambda: _field_choices("model", "dtype")),
        ("`model.device` is ", "`model.revision`", lambda: _field_choices("model", "device")),
        ("  name: lora                     #", "(only the top", lambda: _field_choices("method", "name")),
        ("  scheduler: cosine              #", "\n", lambda: _field_choices("train", "scheduler")),
        ("Types: `f32`", "made from an f16 file", lambda: importlib.import_module("tunelab.export.gguf").QTYPES),
        ("tunelab merge runs/my_run --out merged/", "default:", lambda: _flag_choices("merge", "--dtype")),
    ],
    ids=["model.dtype", "model.device", "method.name", "train.scheduler", "export --type", "merge --dtype"],
)
def test_the_lists_of_allowed_values_in_the_readme_are_complete(start, end, choices):
    """Where the README lists an option's values, it lists them all, as the config (or the command) allows them."""
    said = README[README.index(start) :]
    said = said[: said.index(end, len(start))]
    missing = [c for c in choices() if not re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", said)]
    assert not missing, (said, missing)


def test_what_the_readme_says_the_planner_counts_of_a_sharded_qlora_base_is_what_it_counts():
    """The README's QLoRA-with-FSDP2 part said the memory planner did not know about sharding, to set
    train.micro_batch by hand; since the planner learned fsdp2, it counts each rank's share of the NF4 base."""
    from tunelab.models.llama_config import LlamaConfig
    from tunelab.training.memory import estimate
    from tunelab.training.memory_setup import Setup

    said = " ".join(README[README.index("- **QLoRA with FSDP2**") :].split("\n- **")[0].split())
    assert "does not know about sharding" not in said
    assert "counts each rank's 1/N of the NF4 base" in said
    config = LlamaConfig.from_hf(
        dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
        | dict(num_key_value_heads=4, vocab_size=64, rms_norm_eps=1e-5, max_position_embeddings=64)
    )
    setup = Setup(method="lora", rank=4, quantized=True, micro_batch=1, seq=8)
    one = estimate(config, setup).static["weights: decoder (nf4)"]
    two = estimate(config, dataclasses.replace(setup, shards=2)).static["weights: decoder (nf4), 1/2 (fsdp2)"]
    assert two == -(-one // 2)


def test_the_demo_scores_the_readme_shows_are_printed_as_compare_prints_them():
    """The top of the README shows what `make demo` prints; its lines are format_scores' for the figures they give."""
    from tunelab.eval.compare import format_scores

    block = README[README.index("```\nscores: ") + 4 :].split("```")[0].rstrip("\n").split("\n\n")[0]
    scores = {}
    for line in block.splitlines()[1:]:
        kind, n, base, tuned, base_refused, tuned_refused = re.match(
            r"  (\w+) +\(n= *(\d+)\) +correct: base +([\d.]+)% -> tuned +([\d.]+)% +refused: base +([\d.]+)% -> tuned +"
            r"([\d.]+)%$",
            line,
        ).groups()
        numbers = [float(x) / 100 for x in (base, tuned, base_refused, tuned_refused)]
        scores[kind] = dict(zip(("base", "tuned", "base_refused", "tuned_refused"), numbers), n=int(n))
    assert len(scores) == 2
    assert format_scores(scores) == block


def test_the_overfit_verdict_the_readme_shows_is_the_one_training_prints():
    """The README's overfit example is the verdict on tests/training/test_verdict.py's rising eval curve, with
    keep_best having kept step 40."""
    import math

    from tunelab.training.verdict import judge

    train = [(i + 1, 0.02 + 2.48 * math.exp(-5.0 * i / 100)) for i in range(100)]
    evals = [(20, 0.9), (40, 0.6), (60, 0.7), (80, 0.8), (100, 0.85)]
    text = judge(train, evals, steps_per_epoch=20, epochs=5.0, lr=2e-4, max_steps=None, best_kept=40).text
    assert text.startswith("overfit:") and f"\n{text}\n" in README


def test_the_auto_values_the_readme_prints_are_the_rules_for_lamp_support():
    """The README's block of auto values is what a LoRA run on the embedded model (hidden size 576) prints for a set of
    120 rows without an eval split, lamp_support's."""
    from tunelab.config import MethodConfig, TrainConfig
    from tunelab.training.auto import ModelShape, resolve_auto

    block = README[README.index("```\nauto values (") + 4 :].split("```")[0].splitlines()
    plan = resolve_auto(TrainConfig(), MethodConfig(), 120, ModelShape(576, 30), has_eval=False)
    printed = plan.describe().splitlines()
    assert len(printed) == 6 and printed == block[:6], (printed, block)


def test_the_chat_line_names_every_command_chat_takes():
    """`tunelab chat` ends on /quit as on /exit; the README's chat line named /exit, /reset and /system only."""
    from tunelab.infer.chat import COMMANDS

    line = next(line for line in README.splitlines() if line.startswith("tunelab chat runs/my_run"))
    missing = [c for c in COMMANDS if not re.search(rf"{re.escape(c)}\b", line)]
    assert not missing, missing


def test_the_answer_lengths_the_readme_states_are_the_codes():
    """generate's default length, the least room chat keeps for an answer, and the cap for a model that states no
    context are constants of infer/; the README says them in one parenthesis."""
    from tunelab.infer.chat import ANSWER_ROOM
    from tunelab.infer.generate import DEFAULT_MAX_NEW_TOKENS, UNKNOWN_CONTEXT_TOKENS

    said = " ".join(README[README.index("(generate: ") :].split("\n\n")[0].split())
    said = said[: said.index("). `generate --system")]
    assert said.startswith(f"(generate: {DEFAULT_MAX_NEW_TOKENS}; chat:")
    assert f"once less than {ANSWER_ROOM} tokens of room remain" in said
    assert f"answers at most {UNKNOWN_CONTEXT_TOKENS} tokens" in said


def test_every_default_the_readmes_prose_gives_an_option_is_its_default():
    """`train.max_bad_steps` such steps (default 3), `train.keep_checkpoints` defaults to 2, ...: each default
    stated beside an option's name in prose is the one the config declares."""
    from tunelab.config import to_dict

    defaults = to_dict(load_config(None).config)
    prose = " ".join(README.split())
    stated = [
        (match.group(1), match.group(2))
        for pattern in (r"`(\w+\.\w+)`[^`]{0,60}?\(default:? ([^,:;)\s]+)", r"`(\w+\.\w+)` defaults to ([^,:;)\s]+)")
        for match in re.finditer(pattern, prose)
    ]
    assert len(stated) >= 4
    for option, value in stated:
        section, _, key = option.partition(".")
        default = defaults[section][key]
        assert float(value) == default if isinstance(default, (int, float)) else value == str(default), option


def test_the_fp8_speed_factor_and_bytes_the_readme_states_are_the_planners():
    from tunelab.training import speed

    said = " ".join(README.split())
    assert f"take the base GEMMs {speed.FP8_GEMM_SPEEDUP:.2f}x faster than bf16's" in said
    assert f"with `train.fp8` {speed.FP8_WEIGHT_BYTES:g} bytes a parameter and pass, its GEMMs " in said
    assert f"{speed.FP8_GEMM_SPEEDUP:.2f}x faster and its row quantization 5 bytes a value" in said
