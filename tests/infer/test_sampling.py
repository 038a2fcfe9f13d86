"""What sampling draws from: the options given, and nothing a library adds unasked."""

import importlib.util

import torch

from tunelab.infer.generate import GenerationSettings
from tunelab.infer.run import open_run


def test_sampling_draws_from_the_whole_distribution_top_p_leaves(tiny_run_dir):
    """--temperature 1 (or a server request's "temperature": 1) sampled from the 50 most likely tokens only:
    transformers adds its default top_k 50 (or the one a model's generation_config sets) to a sampling generate
    that does not set it, a filter no option of tunelab (or OpenAI's API) names. With top_p 1 every token can be
    drawn now."""
    run = open_run(tiny_run_dir, device="cpu")
    prompt = torch.tensor([run.tokenizer("Code of box 3?")["input_ids"]] * 40)  # (40, T): 40 draws of one token
    with torch.no_grad():
        top50 = set(run.model(prompt[:1]).logits[0, -1].topk(50).indices.tolist())
    torch.manual_seed(0)
    kwargs = GenerationSettings(max_new_tokens=1, temperature=1.0).kwargs(run.template, run.tokenizer)
    out = run.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    drawn = out[:, -1].tolist()
    # the tiny random model's next-token distribution is near uniform over ~49k tokens: a draw lands in its top 50
    # about once in a thousand
    assert sum(t not in top50 for t in drawn) > 20, drawn


def test_the_models_generation_config_changes_no_answer_and_is_said(tiny_run_dir, capsys):
    """A model whose generation_config.json set no_repeat_ngram_size (or min_p, typical_p, num_beams, ...) had it
    applied by transformers to every answer, though no option of tunelab names it, and nothing said so: greedy
    answers of chat, generate, compare, eval and serve differed from what tunelab's options asked. Such settings are
    now passed as the values that change nothing, and the commands that generate say at start which ones the model
    sets (and which of its own tunelab's settings replace)."""
    from tunelab import api
    from tunelab.infer.generate import config_notice, generate_answers

    run = open_run(tiny_run_dir, device="cpu")
    question = [[{"role": "user", "content": "Code of box 3?"}]]
    settings = GenerationSettings(max_new_tokens=8)
    plain, _ = generate_answers(run.model, run.tokenizer, run.template, question, settings)
    assert config_notice(run.model) is None
    config = run.model.generation_config
    config.no_repeat_ngram_size, config.num_beams, config.temperature = 1, 2, 0.7
    try:
        assert generate_answers(run.model, run.tokenizer, run.template, question, settings)[0] == plain
        notice = config_notice(run.model)
        assert "no_repeat_ngram_size=1, num_beams=2, which tunelab does not apply" in notice, notice
        assert "temperature=0.7, which tunelab's settings replace" in notice, notice
        assert api.generate(run, "Code of box 3?", settings=settings) == plain[0]
        assert notice in capsys.readouterr().err
        if importlib.util.find_spec("fastapi"):  # the server's answer too (the 'serve' extra)
            from fastapi.testclient import TestClient

            from tunelab.server.serve import build_app

            client = TestClient(build_app(run, model_name="tiny", settings=settings))
            assert notice in capsys.readouterr().err
            body = {"model": "tiny", "messages": question[0]}
            served = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
            assert served == plain[0]
    finally:
        config.no_repeat_ngram_size, config.num_beams, config.temperature = 0, 1, 1.0


def test_compare_and_eval_describe_the_base_models_generation_config_too(tiny_run_dir, tmp_path, capsys):
    """compare and eval answer with a base model loaded on its own (a full run's), whose generation_config.json may
    set other things than the tuned model's, yet only the tuned model's was described. Each is said now: the base's
    in full where it differs, in a word where it is the same."""
    import copy
    from contextlib import contextmanager

    from tunelab import api

    run = open_run(tiny_run_dir, device="cpu")
    run.model.generation_config.no_repeat_ngram_size = 3
    try:
        api.compare(run, question=["Code of box 3?"], settings=GenerationSettings(max_new_tokens=2), save=False)
        err = capsys.readouterr().err
        assert "note: the tuned model's generation_config.json sets no_repeat_ngram_size=3" in err, err
        assert "note: the base model's generation_config.json sets the same." in err, err  # the adapter switched off

        base = copy.deepcopy(run.model)
        base.generation_config.no_repeat_ngram_size, base.generation_config.min_p = 0, 0.05

        @contextmanager
        def separate():
            yield base

        run.base_model = separate
        api.compare(run, question=["Code of box 3?"], settings=GenerationSettings(max_new_tokens=2), save=False)
        err = capsys.readouterr().err
        assert "note: the base model's generation_config.json sets min_p=0.05, which tunelab" in err, err
        questions = tmp_path / "q.jsonl"
        questions.write_text('{"question": "Code of box 3?", "expected": "Box 3"}\n')
        api.evaluate(run, questions, settings=GenerationSettings(max_new_tokens=2), save=False)
        err = capsys.readouterr().err
        assert "note: the tuned model's generation_config.json sets no_repeat_ngram_size=3" in err, err
        assert "note: the base model's generation_config.json sets min_p=0.05, which tunelab" in err, err
    finally:
        run.model.generation_config.no_repeat_ngram_size = 0


def test_a_seed_gives_the_same_sampled_answer_and_leaves_the_global_generator(tiny_run_dir, capsys):
    """`generate` took no seed: an answer sampled at a temperature above 0 could not be given again. `seed=` (and
    `--seed`) draws it from a generator of its own, as the server's seeded requests are, so the same seed gives the
    same answer, another seed another, and torch's global generator is neither reseeded nor drawn from."""
    from tunelab import api
    from tunelab.cli import main

    run = open_run(tiny_run_dir, device="cpu")
    sampled = GenerationSettings(max_new_tokens=8, temperature=1.0)
    before = torch.get_rng_state()
    first = api.generate(run, "Code of box 3?", settings=sampled, seed=11)
    assert torch.equal(torch.get_rng_state(), before)  # nothing drawn from the global generator, nor reseeded
    again = api.generate(run, "Code of box 3?", settings=sampled, seed=11)
    others = {api.generate(run, "Code of box 3?", settings=sampled, seed=s) for s in (12, 13, -5)}
    # the tiny random model's next token is near uniform over ~49k: two seeds' 8 tokens agree by chance next to never
    assert first == again and first not in others and len(others) == 3, (first, again, others)
    greedy = GenerationSettings(max_new_tokens=8)  # greedy draws nothing: a seed changes nothing
    assert api.generate(run, "Code of box 3?", settings=greedy, seed=11) == api.generate(
        run, "Code of box 3?", settings=greedy, seed=12
    )

    capsys.readouterr()
    flags = ["--prompt", "Code of box 3?", "--temperature", "1", "--max-new-tokens", "8", "--device", "cpu"]
    printed = []
    for seed in ("11", "11", "12"):
        assert main(["generate", str(tiny_run_dir), *flags, "--seed", seed]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] != printed[2], printed
    assert printed[0].strip() == first  # the flag and the argument draw alike


def test_a_seeded_chat_gives_the_same_answers_again(tiny_run_dir, capsys, monkeypatch):
    """`chat` took no seed either. Its generator is seeded once, so the same messages get the same sampled answers
    (from the CLI too), other seeds other answers, and torch's global generator is left as it was."""
    import io

    from tunelab.cli import main
    from tunelab.infer.chat import chat

    run = open_run(tiny_run_dir, device="cpu")
    sampled = GenerationSettings(max_new_tokens=6, temperature=1.0)

    def transcript(seed, how=chat) -> str:
        inputs, out = iter(["Code of box 1?", "Code of box 2?", "/exit"]), io.StringIO()
        how(run, sampled, read=lambda prompt: next(inputs), out=out, seed=seed)
        return out.getvalue()

    before = torch.get_rng_state()
    first = transcript(5)
    assert torch.equal(torch.get_rng_state(), before)
    assert first == transcript(5) != transcript(6)
    assert first.count("model> ") == 2, first  # two answers drawn one after the other from the one generator

    written = []
    for seed in ("5", "5", "6"):
        monkeypatch.setattr("sys.stdin", io.StringIO("Code of box 1?\nCode of box 2?\n"))
        flags = ["--temperature", "1", "--max-new-tokens", "6", "--device", "cpu", "--seed", seed]
        assert main(["chat", str(tiny_run_dir), *flags]) == 0
        written.append(capsys.readouterr().out.split("model> ", 1)[1])  # after the greeting, which names the run
    assert written[0] == written[1] != written[2], written


def test_a_seed_out_of_range_is_refused_by_name_before_the_model_loads(tmp_path, capsys):
    """A seed torch's generator cannot take failed deep inside with an OverflowError; it is refused by name, exit 2
    from the CLI, before anything loads (the run named here does not exist)."""
    import pytest

    from tunelab import api
    from tunelab.cli import main
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"generate\(\): argument 'seed' is 9223372036854775808; it must be a whole"):
        api.generate(tmp_path / "none", "hi", seed=2**63)
    with pytest.raises(ConfigError, match=r"chat\(\): argument 'seed' is -9223372036854775809"):
        api.chat(tmp_path / "none", seed=-(2**63) - 1)
    with pytest.raises(ConfigError, match="argument 'seed' must be int | None, got a bool"):
        api.generate(tmp_path / "none", "hi", seed=True)
    for argv, says in (
        (["generate", str(tmp_path), "--prompt", "hi", "--seed", str(2**63)], "--seed: 9223372036854775808 is out of"),
        (["chat", str(tmp_path), "--seed", "x"], "--seed: invalid integer value: 'x'"),
    ):
        with pytest.raises(SystemExit) as exit_:  # argparse's own exit, status 2
            main(argv)
        assert exit_.value.code == 2 and says in capsys.readouterr().err
