"""README: its YAML examples load through the config loader, its commands, flags, options, links and scripts are
the code's, and its Layout names every module (the values it states: test_readme_values.py)."""

import itertools
import re
from pathlib import Path

import pytest
import yaml

from tunelab.config import iter_options, load_config, section_names, to_dict

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples"
BLOCKS = [(README[: m.start()].count("\n") + 1, m.group(1)) for m in re.finditer(r"```yaml\n(.*?)```", README, re.S)]


@pytest.mark.parametrize("line, block", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_every_yaml_block_of_the_readme_loads(tmp_path, line, block):
    path = tmp_path / "config.yaml"
    path.write_text(block)
    load_config(path)


EXAMPLE_BLOCKS = [
    (path, block)
    for path in sorted(EXAMPLE_DIR.glob("*/README.md"))
    for block in re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S)
]


@pytest.mark.parametrize("path, block", EXAMPLE_BLOCKS, ids=[p.parent.name for p, _ in EXAMPLE_BLOCKS])
def test_every_yaml_block_of_an_examples_readme_loads(tmp_path, path, block):
    """The examples' READMEs show configs too (oasst_threads: a trees file read through its transform)."""
    config = tmp_path / "config.yaml"
    config.write_text(block)
    load_config(config)


def test_the_defaults_the_readme_lists_are_the_codes():
    [block] = [block for line, block in BLOCKS if README.splitlines()[line - 3].endswith("with their defaults:")]
    defaults = to_dict(load_config(None).config)
    stated = yaml.safe_load(block)
    assert stated
    for section, options in stated.items():
        for name, value in options.items():
            assert defaults[section][name] == value, f"{section}.{name}"


def test_the_layout_names_every_module_under_its_folder():
    layout = README[README.index("## Layout") :]
    layout = layout[layout.index("```") + 4 :]
    layout = layout[: layout.index("```")]
    words: dict[str, set[str]] = {}
    folder = ""
    for line in layout.splitlines():
        if match := re.match(r"  (\w+)/", line):
            folder = match.group(1)
        elif not line.startswith("            "):
            folder = "" if line.startswith("  ") else "-"
        words.setdefault(folder, set()).update(re.findall(r"[\w.]+", line))
    package = Path(__file__).resolve().parents[1] / "src" / "tunelab"
    missing = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
        and not {path.stem, path.name} & words.get("" if path.parent == package else path.parent.name, set())
    ]
    assert not missing, f"modules the README's Layout does not name: {missing}"


def test_what_start_server_returns_is_what_the_readme_says():
    """The README said start_server returns its URL; it returns a RunningServer, whose url lacks the /v1 that an
    OpenAI client's base_url needs: a reader passing the result on as a URL got neither."""
    import inspect

    pytest.importorskip("fastapi")
    from tunelab.server.serve import RunningServer, base_url, start_server

    said = README[README.index("start_server(run_dir, port=0)") :].split("\n\n")[0]
    assert inspect.signature(start_server).return_annotation in (RunningServer, "RunningServer")
    assert "`RunningServer`" in said and "`.url`" in said and "`.stop()`" in said
    assert f"`{base_url('127.0.0.1', 1234).replace('1234', 'PORT')}`" in said and '`.url + "/v1"`' in said


def test_the_underfit_verdict_the_readme_shows_is_the_one_training_prints():
    """The README's underfit example (the synthetic curve of tests/training/test_verdict.py) lacked the threshold the
    verdict names, '(high: 0.500 or more)', so a reader could not tell what 'still high' meant."""
    import math

    from tunelab.training.verdict import judge

    curve = [(i + 1, 1.25 + 1.25 * math.exp(-2.0 * i / 33)) for i in range(33)]
    text = judge(curve, [], steps_per_epoch=20, epochs=3.0, lr=2e-4, max_steps=None, best_kept=None).text
    assert text.startswith("underfit:") and f"\n{text}\n" in README


def test_the_exit_codes_paragraph_names_every_exit_code_and_what_gives_it():
    """The README's exit codes said 1 was `tunelab check` failing, and nothing of `tunelab export`, which exits 1 when
    its self-check gives FAIL; the CLI's docstring lists the same codes."""
    import tunelab.cli

    paragraph = README[README.index("**Exit codes**") :].split("\n\n")[0]
    for code, what in [
        ("1", "tunelab export"),
        ("2", "bad input"),
        ("3", "NaN/inf"),
        ("130", "Ctrl-C"),
        ("143", "SIGTERM"),
    ]:
        assert re.search(rf"\b{code} [^,]*{re.escape(what)}", " ".join(paragraph.split())), code
    assert "1 check failed (or export's self-check: FAIL)" in " ".join(tunelab.cli.__doc__.split())


def test_the_python_api_calls_of_the_readme_bind_to_the_real_signatures():
    """Every `tunelab.NAME(...)` call in the README's Python blocks names a function the package exports, with
    arguments its signature takes (positional count and keyword names), so the examples run as written."""
    import ast
    import inspect

    import tunelab

    calls = []
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        for node in ast.walk(ast.parse(block)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "tunelab"
            ):
                calls.append(node)
    assert len(calls) >= 20
    for call in calls:
        function = getattr(tunelab, call.func.attr, None)
        assert callable(function), f"tunelab.{call.func.attr} is not in the package"
        keywords = {k.arg: None for k in call.keywords}
        try:
            inspect.signature(function).bind(*[None] * len(call.args), **keywords)
        except TypeError as error:
            raise AssertionError(f"line {call.lineno}: tunelab.{call.func.attr}: {error}") from error


def test_every_flag_the_readme_gives_a_command_is_one_it_takes():
    """The flags of the README's `tunelab COMMAND ...` lines (shell blocks and inline code) are options of that
    command's parser, or dotted config options for the commands that take a config, so a copied line runs."""
    import argparse

    from tunelab.cli import build_parser
    from tunelab.config import iter_options

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    dotted = {f"--{name}" for name, _, _ in iter_options()} | {"--section.key"}  # the README's placeholder
    lines = [
        line.split("  #")[0] for block in re.findall(r"```bash\n(.*?)```", README, re.S) for line in block.splitlines()
    ]
    lines += re.findall(r"`(tunelab [^`]*)`", README)
    seen, unknown = 0, []
    for line in lines:
        if not (match := re.search(r"(?:^|\s)tunelab (\w+)(.*)", line)):
            continue
        command, rest = match.groups()
        assert command in commands, f"README: 'tunelab {command}' is no command: {line.strip()}"
        takes = {flag for action in commands[command]._actions for flag in action.option_strings}
        takes |= dotted if command in ("train", "check", "plan", "federate") else set()
        for flag in re.findall(r"(?<![\w-])(--[\w.-]+)", rest):
            seen += 1
            if flag not in takes:
                unknown.append(f"tunelab {command} {flag}: {line.strip()}")
    assert seen >= 40 and not unknown, unknown


def _yaml_options(value, section=""):
    """The dotted option names a README YAML block sets (stages' entries included)."""
    if isinstance(value, list):
        return {name for item in value for name in _yaml_options(item, section)}
    if not isinstance(value, dict):
        return set()
    names = set()
    for key, item in value.items():
        name = f"{section}.{key}" if section else str(key)
        names.add(name)
        if not section:
            names |= _yaml_options(item, name if key in section_names() else "")
    return names


def test_every_option_is_in_the_readme():
    """data.shuffle and train.max_grad_norm were options the README never named: a user reading it could not learn
    that shuffling can be turned off or that gradients are clipped at 1.0. An option is named by its dotted name, as
    a key of a YAML block, or by its key in a YAML block (its comments included) that sets its section."""
    parsed = [(block, _yaml_options(yaml.safe_load(block))) for _, block in BLOCKS]
    named = {name for _, names in parsed for name in names}
    near = {
        f"{section}.{word}"
        for block, names in parsed
        for section in {n.partition(".")[0] for n in names}
        for word in re.findall(r"\w+", block)
    }
    missing = [
        o for o, _, _ in iter_options() if o not in named | near and not re.search(rf"\b{re.escape(o)}\b", README)
    ]
    assert not missing, f"options the README does not name: {missing}"


def test_the_reward_table_names_every_form_of_function_the_examples_use():
    """The grpo reward table said a `function` reward is a `module:function` importable from the working directory;
    examples/arithmetic_grpo names `rewards.py:closeness`, a file relative to its config, which the table left out."""
    row = next(line for line in README.splitlines() if line.startswith("| `function` |"))
    shipped = Path(__file__).resolve().parents[1] / "examples"
    specs = [
        r["function"]
        for config in shipped.glob("*/config*.yaml")
        for r in (yaml.safe_load(config.read_text()).get("grpo") or {}).get("rewards") or []
        if isinstance(r, dict) and r.get("kind") == "function"
    ]
    assert specs, "no shipped example has a function reward"
    for spec in specs:
        form = "`file.py:function`" if spec.rpartition(":")[0].endswith(".py") else "`module:function`"
        assert form in row, (spec, form)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces as
    hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_anchor_of_the_readme_names_one_of_its_headings():
    """A link `[...](#anchor)` leads nowhere once the heading it names is reworded."""
    headings = {_slug(h) for h in re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", README, flags=re.S), re.M)}
    anchors = re.findall(r"\]\(#([^)]+)\)", README)
    assert anchors
    missing = [a for a in anchors if a not in headings]
    assert not missing, f"README anchors without a heading: {missing}"


DOCS = [Path(__file__).resolve().parents[1] / "README.md", *sorted(EXAMPLE_DIR.glob("*/README.md"))]
FILE_SUFFIXES = {
    "jsonl",
    "json",
    "csv",
    "tsv",
    "parquet",
    "png",
    "safetensors",
    "gguf",
    "txt",
    "yaml",
    "html",
    "md",
    "py",
    "Modelfile",
}


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(EXAMPLE_DIR.parent)) for d in DOCS])
def test_every_dotted_option_a_readme_names_is_an_option(doc):
    """A name like `train.foo` in the README's or an example's prose, of a config section, is an option that exists
    (file names such as train.jsonl aside): a renamed or removed option otherwise stays documented under its old
    name, and a reader's `--train.foo` is refused."""
    options = {name for name, _, _ in iter_options()}
    sections = "|".join(sorted(section_names()))
    text = doc.read_text()
    unknown = sorted(
        {
            name
            for name in re.findall(rf"(?<![\w./-])((?:{sections})\.\w+)(?![\w(/]|\.\w)", text)
            if name not in options and name.partition(".")[2] not in FILE_SUFFIXES
        }
    )
    assert not unknown, f"{doc.name}: not options: {unknown}"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(EXAMPLE_DIR.parent)) for d in DOCS])
def test_every_command_line_a_readme_gives_parses(doc):
    """Each `tunelab ...` line of a bash block, as a reader copies it (optional `[...]` parts left out), is taken by
    the CLI's parser: the flags exist, take the values given, and the positional arguments are the ones it needs."""
    import contextlib
    import io
    import shlex

    from tunelab.cli_parser import build_parser, parse
    from tunelab.config.flags import join_negative_values

    lines = [
        re.sub(r"\[[^\]]*\]", "", line.split("  #")[0])
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S)
        for line in block.splitlines()
    ]
    parser, failed = build_parser(), []
    for line in lines:
        if not (match := re.search(r"(?:^|\s)tunelab (\w.*)", line)):
            continue
        argv = shlex.split(re.split(r" \| | < | && ", match.group(1))[0], comments=True)
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                parse(parser, join_negative_values(argv))
        except SystemExit as stop:
            if stop.code:
                failed.append(f"{line.strip()}: {stderr.getvalue().strip().splitlines()[-1:]}")
        except Exception as error:  # a ConfigError of an unknown option
            failed.append(f"{line.strip()}: {error}")
    assert not failed, failed


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(EXAMPLE_DIR.parent)) for d in DOCS])
def test_every_script_a_readme_runs_is_a_file_of_the_repository(doc):
    """The commands run from the repository's root, as every other line of the READMEs runs; the oasst_threads
    README ran `python flat_to_trees.py`, which is found only from inside its folder."""
    root = EXAMPLE_DIR.parent
    text = doc.read_text()
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    lines += re.findall(r"`(python3? [^`]*)`", text)
    scripts = [s for line in lines for s in re.findall(r"(?:^|\s)python3? (\S+\.py)\b", line.split("#")[0])]
    missing = [s for s in scripts if not (root / s).is_file()]
    assert not missing, f"{doc.relative_to(root)}: no such script from the repository's root: {missing}"


def test_the_layout_names_every_benchmark_script():
    """The Layout's benchmarks/ entry once named 7 of its scripts; every script in the folder is named there."""
    layout = README[README.index("## Layout") :].split("```")[1]
    entry = layout[layout.index("\nbenchmarks/") + 1 :].splitlines()
    lines = [entry[0], *itertools.takewhile(lambda line: line.startswith("            "), entry[1:])]
    named = set(re.findall(r"[\w.]+\.py", " ".join(lines)))
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    scripts = {path.name for path in folder.glob("*.py")}
    assert scripts, folder
    assert not scripts - named, f"benchmark scripts the README's Layout does not name: {sorted(scripts - named)}"


def test_the_tests_section_names_every_script_of_the_scripts_folder():
    """The Tests section lists what a maintainer runs from scripts/; five of its GPU scripts (the sampler's, dpo's,
    the CUDA graphs', the planner's and the speed targets' benchmarks) were named nowhere in the README."""
    tests = README[README.index("\n## Tests\n") : README.index("\n## Layout\n")]
    named = set(re.findall(r"[\w.]+\.(?:sh|py)", tests))
    folder = Path(__file__).resolve().parents[1] / "scripts"
    scripts = {path.name for path in folder.iterdir() if path.is_file()}
    assert scripts, folder
    assert not scripts - named, f"scripts the README's Tests section does not name: {sorted(scripts - named)}"


def test_every_note_of_the_layout_follows_the_module_it_describes():
    """The Layout gives each module's note in parentheses after its name; the server's template_kwargs had its note
    after completions, two modules on, where it read as a second note of completions."""
    layout = README[README.index("## Layout") :].split("```")[1]
    assert not re.search(r"\)\s+\(", layout), re.findall(r".{40}\)\s+\(.{40}", layout, re.S)


def test_the_api_calls_in_the_readmes_prose_bind_to_the_real_signatures():
    """Calls written inline (`tunelab.check(..., model=False)`, `evaluate(run, data, batch_size=8)`) name keywords
    that the API function takes, and no more positional arguments than it has (`...` stands for any)."""
    import ast
    import inspect

    import tunelab

    checked, wrong = 0, []
    for code in re.findall(r"`([^`\n]*\w\([^`\n]*\))[^`\n]*`", README):
        try:
            tree = ast.parse(code.strip())
        except SyntaxError:
            continue
        for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
            func = call.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "tunelab":
                name = func.attr
            elif isinstance(func, ast.Name) and func.id in tunelab._API:
                name = func.id
            else:
                continue
            signature = inspect.signature(getattr(tunelab, name))
            keywords = {k.arg: None for k in call.keywords}
            anything = any(isinstance(a, ast.Constant) and a.value is Ellipsis for a in call.args)
            try:
                signature.bind_partial(*([] if anything else [None] * len(call.args)), **keywords)
                checked += 1
            except TypeError as error:
                wrong.append(f"{code}: {error}")
    assert checked >= 10 and not wrong, (checked, wrong)


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(EXAMPLE_DIR.parent)) for d in DOCS])
def test_every_dotted_tunelab_name_a_readme_gives_exists(doc):
    """`tunelab.server.serve.start_server`, `tunelab.config.iter_options()`, `tunelab.errors.TunelabError`: each
    name the READMEs give of the package is a module, or an attribute of one, that exists."""
    import importlib

    missing = []
    for name in sorted(set(re.findall(r"(?<![\w.])tunelab(?:\.[A-Za-z_]\w*)+", doc.read_text()))):
        parts, target = name.split("."), None
        for i in range(len(parts), 0, -1):  # the longest importable module, then attributes of it
            try:
                target = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for part in parts[i:]:
                target = getattr(target, part, None)
            break
        if target is None:
            missing.append(name)
    assert not missing, missing


def test_the_python_api_table_pairs_every_command_with_a_function_and_every_function_is_shown():
    """The Python API section's table has a row for each subcommand of the parser, each naming functions the package
    exports (`cache` names four); and the section names every function of the API, so a command added without its
    function, or a function without its line, is caught."""
    import argparse

    import tunelab
    from tunelab.cli_parser import build_parser

    section = README[README.index("## Python API") : README.index("## Tests")]
    rows = re.findall(r"^\| `tunelab (\w+)`[^|]*\| ([^|]+) \|", section, re.M)
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(command for command, _ in rows) == sorted(subparsers.choices)
    for command, python in rows:
        named = re.findall(r"`(?:tunelab\.)?(\w+)\(", python) + re.findall(r", (\w+)\(", python)
        assert named, command
        assert all(name in tunelab._API for name in named), (command, named)
    functions = [name for name in tunelab._API if not name[0].isupper()]  # the types are the functions' results
    missing = [name for name in functions if not re.search(rf"tunelab\.{name}\(|`{name}\(", section)]
    assert not missing, f"API functions the README's Python API section does not name: {missing}"
