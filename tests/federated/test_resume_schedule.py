"""What `tunelab federate --resume` says of the learning rate when federated.rounds changes."""

from tunelab.config import load_config
from tunelab.federated.resume import check_resume
from tunelab.federated.server import run_federation


def test_a_resume_with_more_rounds_says_the_decay_is_recomputed_and_the_warmup_kept(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients
):
    """The note said 'its learning-rate schedule recomputed', as if the warmup were too, while the clients keep the
    warmup the federation started with (the README's account) and recompute only the decay after it."""
    config = federate_config(tmp_path, tiny_model_dir)  # 2 rounds x 3 local steps
    run = run_federation(None, load_config(config, {"train.warmup_ratio": 0.5}), 2, ["s0", "s1"], resume=False)
    notes = check_resume(run, load_config(config, {"train.warmup_ratio": 0.5, "federated.rounds": 4}).config)
    rounds = [note for note in notes if note.startswith("resume: federated.rounds: 2 -> 4")]
    assert len(rounds) == 1
    assert "from round 3 on, the learning rate's cosine decay is recomputed over the new 4 x 3 steps" in rounds[0]
    assert "its warmup keeps the 3 steps the federation started with" in rounds[0]
    assert "schedule recomputed" not in rounds[0]
