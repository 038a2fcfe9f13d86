"""Loss kto's reference point z0 on two gloo ranks: ranks holding different rows (and different row counts) score
against one z0, the mean over the union of their mismatched rows, as TRL gathers its KL estimate over processes; a
blank micro-batch adds no row; eval (share None) and one process keep the micro-batch's own estimate."""

import json
from pathlib import Path

import pytest
import torch

from tunelab.tasks.kto import kto_scores, reference_point

# Per rank: the policy's and reference's summed log p, its B rows' own completions first, then their mismatched ones.
# Rank 0 holds 3 rows whose mismatched log ratios are 3, 5, 1 (mean 3); rank 1 holds 1 row at -4 (alone, clamped to 0).
RANKS = [
    {
        "policy": [-10.0, -20.0, -15.0, -27.0, -25.0, -29.0],
        "reference": [-12.0, -19.0, -15.0, -30.0, -30.0, -30.0],
        "desirable": [True, False, True],
    },
    {"policy": [-8.0, -34.0], "reference": [-9.0, -30.0], "desirable": [False]},
]


def _mismatched(rank: int) -> torch.Tensor:
    policy, reference = torch.tensor(RANKS[rank]["policy"]), torch.tensor(RANKS[rank]["reference"])
    return (policy - reference)[policy.shape[0] // 2 :]


def _scores(rank: int, share: float | None):
    r = RANKS[rank]
    policy, reference = torch.tensor(r["policy"]), torch.tensor(r["reference"])
    return kto_scores(policy, reference, torch.tensor(r["desirable"]), 0.5, 1.0, 1.5, share=share)


def _worker(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        shared = _scores(rank, share=1.0)
        own = _scores(rank, share=None)  # eval: no collective
        blank = reference_point(_mismatched(rank), share=0.0 if rank == 1 else 1.0)  # rank 1's micro-batch a blank
        record = {"z0": shared.z0.item(), "loss": shared.loss.tolist(), "own": own.z0.item(), "blank": blank.item()}
        Path(out, f"rank-{rank}.json").write_text(json.dumps(record))
        dist.barrier()  # both ranks done before either tears gloo down
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("kto_ranks")
    mp.spawn(_worker, args=(2, str(folder / "store"), str(folder)), nprocs=2)
    return [json.loads((folder / f"rank-{r}.json").read_text()) for r in range(2)]


def test_two_ranks_on_different_rows_share_the_z0_of_their_union(records):
    union = torch.cat([_mismatched(0), _mismatched(1)])
    want = union.mean().clamp(min=0).item()  # one process holding all four rows: (3 + 5 + 1 - 4) / 4
    assert want > 0 and records[0]["z0"] == records[1]["z0"] == pytest.approx(want, rel=1e-6)
    # the mean of the ranks' means (3 and -4 -> -0.5, clamped to 0) would weigh rank 1's one row as rank 0's three
    assert want != pytest.approx(max(0.0, (_mismatched(0).mean() + _mismatched(1).mean()).item() / 2))
    # each rank's rows are scored against that z0: rank 1's undesirable row r = 1 with z0 1.25
    r = 1.0
    assert records[1]["loss"] == pytest.approx([1.5 * (1 - torch.sigmoid(torch.tensor(0.5 * (want - r))).item())])


def test_eval_keeps_each_ranks_own_estimate_and_a_blank_adds_no_row(records):
    assert records[0]["own"] == pytest.approx(_mismatched(0).mean().item())
    assert records[1]["own"] == 0.0  # -4 alone, clamped
    assert records[0]["blank"] == records[1]["blank"] == pytest.approx(_mismatched(0).mean().item())


def test_one_process_keeps_the_micro_batchs_own_estimate_bit_for_bit():
    """No process group: share changes nothing, and z0 is the micro-batch's mean as it was computed before."""
    for rank in range(2):
        want = _mismatched(rank).detach().mean().clamp(min=0)
        for share in (None, 1.0):
            assert torch.equal(_scores(rank, share).z0, want)
