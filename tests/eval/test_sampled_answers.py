"""compare and eval took no seed: answers sampled at a temperature above 0 (and the scores taken on them) differed
from one call to the next with no way to give them again. Both now draw from a generator seeded with `seed` /
`--seed` (default: the run's train.seed), a fresh one for each model, record it in compare.json and eval.json, and the
report says it; greedy answers draw nothing and stay as they were."""

import json
import shutil

import pytest
import torch

import tunelab
from tunelab.cli import main
from tunelab.config import dump_yaml, load_config
from tunelab.config.flags import PYTHON
from tunelab.errors import ConfigError
from tunelab.eval.compare import format_comparison
from tunelab.eval.evaluate import format_eval
from tunelab.eval.report_inputs import Input
from tunelab.eval.report_scores import eval_section
from tunelab.infer.generate import GenerationSettings
from tunelab.infer.run import open_run
from tunelab.rundir import write_config

TOKENS = 4  # the run's eval.max_new_tokens here
RUN_SEED = 7  # the run's train.seed here: not 42, so a default taken from elsewhere shows
SAMPLED = GenerationSettings(temperature=1.0)
GREEDY = GenerationSettings()


@pytest.fixture(scope="module")
def run(tiny_run_dir, tmp_path_factory):
    """A copy of the tiny finished run trained (as its config.yaml says) with seed RUN_SEED."""
    copy = shutil.copytree(tiny_run_dir, tmp_path_factory.mktemp("seeded") / "run")
    cfg = load_config(copy / "config.yaml").config
    cfg.eval.max_new_tokens, cfg.train.seed = TOKENS, RUN_SEED
    write_config(copy, dump_yaml(cfg))
    return copy


@pytest.fixture(scope="module")
def loaded(run):
    return open_run(run, device="cpu")


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    path = tmp_path_factory.mktemp("questions") / "q.jsonl"
    rows = [{"question": f"Code of box {i}?", "expected": f"Box {i}", "kind": "fact"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _compared(result) -> list[tuple[str, str]]:
    return [(r.base, r.tuned) for r in result.rows]


def _evaluated(result) -> list[tuple[str, str]]:
    return [(r.base.text, r.tuned.text) for r in result.rows]


def test_compare_gives_the_same_sampled_answers_for_one_seed(loaded, questions):
    before = torch.get_rng_state()
    first = tunelab.compare(loaded, questions, settings=SAMPLED, seed=3, save=False)
    assert torch.equal(torch.get_rng_state(), before)  # torch's global generator neither drawn from nor reseeded
    again = tunelab.compare(loaded, questions, settings=SAMPLED, seed=3, save=False)
    other = tunelab.compare(loaded, questions, settings=SAMPLED, seed=4, save=False)
    assert _compared(first) == _compared(again) and first.scores == again.scores
    # the tiny random model's next token is near uniform over ~49k: 4 tokens of 6 answers agree by chance next to never
    assert _compared(other) != _compared(first)
    assert first.seed == 3 and first.to_dict()["seed"] == 3
    assert "seed 3: the same seed, settings and device give the same answers, seed=N others" in format_comparison(
        first, spelling=PYTHON
    )

    default = tunelab.compare(loaded, questions, settings=SAMPLED, save=False)  # the run's train.seed
    assert default.seed == RUN_SEED
    assert _compared(default) == _compared(
        tunelab.compare(loaded, questions, settings=SAMPLED, seed=RUN_SEED, save=False)
    )


def test_compare_and_eval_leave_greedy_answers_as_they_were(loaded, questions):
    """Greedy answers draw nothing: any seed gives the answers of no seed at all, and nothing is said of sampling."""
    results = [tunelab.compare(loaded, questions, settings=GREEDY, seed=s, save=False) for s in (None, 1, 2)]
    assert _compared(results[0]) == _compared(results[1]) == _compared(results[2])
    assert "sampled" not in format_comparison(results[1])
    evals = [tunelab.evaluate(loaded, questions, settings=GREEDY, seed=s, save=False) for s in (1, 2)]
    assert _evaluated(evals[0]) == _evaluated(evals[1])
    assert [r.tuned.text for r in evals[0].rows] == [r.tuned for r in results[0].rows]  # eval answers as compare does
    assert "sampled" not in format_eval(evals[0])
    assert "sampled" not in eval_section(Input("eval.json", evals[0].to_dict()), Input("compare.json", None))


def test_eval_gives_the_same_sampled_answers_and_scores_for_one_seed(loaded, questions, tmp_path):
    out = tmp_path / "eval.json"
    first = tunelab.evaluate(loaded, questions, settings=SAMPLED, seed=3, out=out)
    again = tunelab.evaluate(loaded, questions, settings=SAMPLED, seed=3, save=False)
    other = tunelab.evaluate(loaded, questions, settings=SAMPLED, seed=4, save=False)
    assert _evaluated(first) == _evaluated(again) and _evaluated(other) != _evaluated(first)
    for which in ("base", "tuned"):
        assert getattr(first, which).overall == getattr(again, which).overall  # the same scores too
    saved = json.loads(out.read_text())
    assert saved["seed"] == 3 and saved["settings"]["temperature"] == 1.0
    assert "seed 3: the same seed" in format_eval(first)
    page = eval_section(Input("eval.json", saved), Input("compare.json", None))
    assert "new tokens, sampled at temperature 1.0, top_p 1.0, seed 3;" in page
    assert tunelab.evaluate(loaded, questions, settings=SAMPLED, save=False).seed == RUN_SEED


def test_the_seed_flag_gives_compare_json_the_same_answers_and_records_it(run, questions, capsys):
    flags = ["--questions", str(questions), "--device", "cpu", "--temperature", "1", "--overwrite"]
    saved = []
    for seed in (["--seed", "5"], ["--seed", "5"], []):
        assert main(["compare", str(run), *flags, *seed]) == 0
        saved.append(json.loads((run / "compare.json").read_text()))
    out = capsys.readouterr().out
    assert "seed 5: the same seed, settings and device give the same answers, --seed N others" in out
    assert saved[0]["seed"] == saved[1]["seed"] == 5 and saved[2]["seed"] == RUN_SEED
    assert saved[0]["rows"] == saved[1]["rows"] != saved[2]["rows"]
    page = eval_section(Input("eval.json", None), Input("compare.json", saved[0]))
    assert "Answers sampled at temperature 1.0, top_p 1.0, seed 5." in page
    older = {k: v for k, v in saved[0].items() if k != "seed"}  # written before the seed was recorded
    page = eval_section(Input("eval.json", None), Input("compare.json", older))
    assert "Answers sampled at temperature 1.0, top_p 1.0, seed not recorded." in page

    out_file = run.parent / "eval-seeded.json"
    assert main(["eval", str(run), "--data", str(questions), "--device", "cpu", "--temperature", "1", "--seed", "5",
                 "--out", str(out_file)]) == 0  # fmt: skip
    assert json.loads(out_file.read_text())["seed"] == 5


def test_the_default_seed_is_the_runs_train_seed_else_42(run, tmp_path):
    from tunelab.eval.questions import answer_seed

    assert answer_seed(None, run) == RUN_SEED and answer_seed(-3, run) == -3
    bare = tmp_path / "run"  # a run whose config.yaml is gone records no seed
    bare.mkdir()
    assert answer_seed(None, bare) == 42


def test_a_bad_seed_is_refused_by_name_before_the_model_loads(tmp_path, capsys):
    """The run named does not exist: the seed is the first thing said."""
    with pytest.raises(ConfigError, match=r"compare\(\): argument 'seed' is 9223372036854775808; it must be a whole"):
        tunelab.compare(tmp_path / "none", question="hi", seed=2**63)
    with pytest.raises(ConfigError, match=r"evaluate\(\): argument 'seed' is -9223372036854775809"):
        tunelab.evaluate(tmp_path / "none", tmp_path / "q.jsonl", seed=-(2**63) - 1)
    with pytest.raises(ConfigError, match="argument 'seed' must be int | None, got a bool"):
        tunelab.compare(tmp_path / "none", question="hi", seed=True)
    for command in (["compare", str(tmp_path), "--question", "hi"], ["eval", str(tmp_path), "--data", "q.jsonl"]):
        with pytest.raises(SystemExit) as exit_:  # argparse's own exit, status 2
            main([*command, "--seed", str(2**63)])
        assert exit_.value.code == 2 and "--seed: 9223372036854775808 is out of" in capsys.readouterr().err
