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
