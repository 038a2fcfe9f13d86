"""`tunelab check` of a staged run: which tokenizer reads a later stage's rows."""

import tunelab


def test_a_stage_after_full_weights_says_it_was_read_with_stage_1s_tokenizer(tiny_overrides, capsys):
    """Stage 2 of a staged run trains over stage 1's result, which check cannot read before it is trained: its rows
    were read with stage 1's tokenizer without a word. check now says so, for such a stage alone."""
    overrides = {k: v for k, v in tiny_overrides.items() if not k.startswith("method.")}
    data = {"train": tiny_overrides["data.train"]}
    full = [{"data": data, "method": {"name": "full"}}, {"data": data, "method": {"name": "lora", "r": 4}}]
    tunelab.check(None, overrides | {"stages": full}, model=False, show=True)
    out = capsys.readouterr().out
    assert (
        f"(read with stage 1's tokenizer, {tiny_overrides['model.name']}: stage 1's result is not trained yet)" in out
    )
    adapter = [{"data": data}, {"data": data}]  # continue: adapter: stage 2 reads with the base's own tokenizer
    tunelab.check(None, overrides | {"stages": adapter, "method.r": 4}, model=False, show=True)
    out = capsys.readouterr().out
    assert "stage 2: " in out and "read with stage 1's tokenizer" not in out
