"""The cuBLAS workspaces the memory model counts (`training.workspaces`): one workspace's size as torch chooses it,
how many a step holds, and where they land in the estimate. Every expected number is worked out by hand."""

import dataclasses

import pytest

from tunelab.training.memory import GIB, estimate
from tunelab.training.memory_setup import Setup
from tunelab.training.plan import plan
from tunelab.training.workspaces import cublas_workspace_bytes, step_workspaces

from .memory_tiny import LORA, TINY

MIB = 2**20


@pytest.mark.parametrize(
    ("capability", "size"),
    [
        ((9, 0), 32 * MIB),  # H100, H200: ":4096:8", 4096 KiB x 8
        ((10, 0), 32 * MIB),  # Blackwell
        ((12, 0), 32 * MIB),
        (None, 32 * MIB),  # planning for another machine: taken for a Hopper
        ((8, 0), 8 * MIB + 128 * 1024),  # ":4096:2:16:8": 4096 KiB x 2 + 16 KiB x 8
        ((7, 5), 8_519_680),  # the same, in bytes
    ],
)
def test_torch_default_workspace_follows_the_compute_capability(capability, size):
    assert cublas_workspace_bytes(capability) == size


@pytest.mark.parametrize(
    ("config", "size"),
    [
        (":4096:8", 32 * MIB),
        (":4096:2:16:8", 8 * MIB + 128 * 1024),  # on a Hopper too: the variable wins
        (":16:8", 128 * 1024),
        (":4096:1", 4 * MIB),
    ],
)
def test_cublas_workspace_config_sets_the_size(config, size):
    assert cublas_workspace_bytes((9, 0), config) == size


def test_an_unreadable_cublas_workspace_config_leaves_the_default():
    # torch warns and keeps its default when no ":SIZE:COUNT" pair parses
    assert cublas_workspace_bytes((9, 0), "lots") == 32 * MIB
    assert cublas_workspace_bytes((8, 6), "") == 8 * MIB + 128 * 1024


def test_an_eager_step_holds_two_and_a_graphed_one_three_then_four():
    assert step_workspaces(False) == (2, 0)  # the forward's thread and autograd's, one stream
    assert step_workspaces(True) == (3, 1)  # two streams; the captured backward's taken when it starts


def test_an_eager_step_counts_two_workspaces_through_every_phase():
    e = estimate(TINY, LORA)
    assert e.static["cuBLAS workspaces"] == 2 * 32 * MIB
    assert e.peak_phase == "head" and "cuBLAS workspace of the captured backward" not in e.transient
    # the phases from the backward on have nothing more: recomputing every layer
    ckpt = estimate(TINY, dataclasses.replace(LORA, checkpointed=3))
    assert ckpt.peak_phase == "recomputation" and ckpt.static["cuBLAS workspaces"] == 2 * 32 * MIB
    assert "cuBLAS workspace of the captured backward" not in ckpt.transient


def test_a_graphed_step_counts_three_at_its_head_and_four_from_its_backward_on():
    # 1 KiB workspaces, so that the tiny model's activations, not the workspaces, decide which phase peaks
    graphed = dataclasses.replace(LORA, graphs=True, blas_workspace=1024)
    head = estimate(TINY, graphed)
    assert head.peak_phase == "head"
    assert head.static["cuBLAS workspaces"] == 3 * 1024
    assert "cuBLAS workspace of the captured backward" not in head.transient
    ckpt = estimate(TINY, dataclasses.replace(graphed, checkpointed=3))
    assert ckpt.peak_phase == "recomputation"
    assert ckpt.static["cuBLAS workspaces"] + ckpt.transient["cuBLAS workspace of the captured backward"] == 4 * 1024
    # full fine-tuning's optimizer step comes after the captured backward: all four
    full = estimate(TINY, Setup(method="full", micro_batch=2, seq=24, graphs=True))
    assert full.peak_phase == "optimizer step"
    assert full.static["cuBLAS workspaces"] == 3 * 32 * MIB
    assert full.transient["cuBLAS workspace of the captured backward"] == 32 * MIB
    # with 32 MiB workspaces the tiny model's kept-layer backward, with the fourth, outgrows its head
    assert (
        estimate(TINY, dataclasses.replace(graphed, blas_workspace=32 * MIB)).peak_phase == "backward of a kept layer"
    )


def test_offload_runs_eagerly_and_counts_two():
    # offload waits on host copies, so the micro-batch is not replayed from a graph (`training.graphs`)
    off = estimate(TINY, dataclasses.replace(LORA, graphs=True, checkpointed=3, offload=True))
    assert off.static["cuBLAS workspaces"] == 2 * 32 * MIB
    assert "cuBLAS workspace of the captured backward" not in off.transient


def test_the_size_of_one_workspace_scales_the_part():
    small = estimate(TINY, dataclasses.replace(LORA, blas_workspace=8 * MIB + 128 * 1024))
    assert small.static["cuBLAS workspaces"] == 2 * (8 * MIB + 128 * 1024)
    none = estimate(TINY, dataclasses.replace(LORA, graphs=True, checkpointed=3, blas_workspace=0))
    assert "cuBLAS workspaces" not in none.static and "cuBLAS workspace of the captured backward" not in none.transient


def test_a_plan_on_the_cpu_counts_no_workspace():
    cpu = plan(TINY, dataclasses.replace(LORA, graphs=True), 1 * GIB, global_batch=2, cuda=False).chosen.estimate
    assert "cuBLAS workspaces" not in cpu.static
    gpu = plan(TINY, LORA, 1 * GIB, global_batch=2, cuda=True).chosen.estimate
    assert gpu.static["cuBLAS workspaces"] == 2 * 32 * MIB
