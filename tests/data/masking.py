"""What a rendered row trains on, as text: the render and template tests compare it with the answers they expect."""


def masked_runs(tokenizer, row) -> list[str]:
    """Decoded text of each contiguous run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(row.input_ids, row.labels):
        if label != -100:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r, clean_up_tokenization_spaces=False) for r in runs]
