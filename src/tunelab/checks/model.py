"""Checks that need the model, on the first real micro-batch of training.

- one forward/backward in training mode: the loss is finite, and every trainable tensor gets a finite, non-zero
  gradient. The exception is LoRA's A while its B is still zero, as it is at initialisation: dL/dA = B^T (...) = 0
  by construction at the first step (B's gradient is the one that must not vanish);
- the same batch in eval mode, compared three ways on its mean token loss:
  padded batch == each row alone (padding is masked, not attended to); on the fast path, one packed row with
  cu_seqlens == the padded rows; and fast path == generic transformers path (`compare_paths`);
- on CUDA, the peak memory of the training step.

Tolerances, on the mean loss per token (|a - b| <= tol * max(1, |b|)):
- fp32: 1e-4. Both sides compute the same maths in a different order; fp32 rounds at 6e-8 relative and those
  differences add up over the hidden width, the layers and the tokens to ~1e-6 on the test models. A real mismatch
  (a mask, a position, a rope or a template error) moves the loss by 1e-2 or more.
- bf16/fp16: 2e-2. bf16 keeps 8 significant bits (rounding 3.9e-3 relative), and two implementations round at
  different points of every layer (fused kernels, flash/varlen against padded attention); over a deep residual
  stream the logits drift by ~1e-2 relative, far below the errors this check is for. The measured difference is
  always printed, so a GPU run shows how much of the margin is used.
"""

from __future__ import annotations

import math

import torch

from tunelab.data.batches import make_batches
from tunelab.data.checks import CheckItem
from tunelab.data.loader import epoch_rows
from tunelab.data.packing import pack
from tunelab.data.render import IGNORE, Rendered
from tunelab.errors import counted
from tunelab.models.untrained import UntrainedReport
from tunelab.training.build import BuiltModel
from tunelab.training.loss_scale import LossScale, uses_loss_scale
from tunelab.training.step import loss_tokens, summed_loss


def tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 2e-2


def _close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def first_batch(cfg, data, pad_id: int) -> dict:
    """The first micro-batch training will see (epoch 0, the same shuffle and length grouping), on the CPU."""
    t = cfg.train
    rows = epoch_rows(data, t.seed, 0)  # a mixture's draw, packed where asked
    grouped = {"group_by_length": True} if t.group_by_length else {}  # as training/loop.py makes them
    return make_batches(rows, t.micro_batch, pad_id, shuffle=cfg.data.shuffle, seed=t.seed, epoch=0, **grouped)[0]


def documents(batch: dict) -> list[Rendered]:
    """The examples of a CPU batch, each on its own, with no label on its first token (as packing has it)."""
    docs = []
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        lengths = batch["doc_lengths"][b] if "doc_lengths" in batch else [n]
        start = 0
        for length in lengths:
            doc_labels = [IGNORE] + labels[b, start + 1 : start + length].tolist()
            docs.append(Rendered(ids[b, start : start + length].tolist(), doc_labels, "", 0))
            start += length
    return docs


def padded(docs: list[Rendered], pad_id: int) -> dict:
    return make_batches(docs, len(docs), pad_id, shuffle=False, seed=0, epoch=0)[0]


def packed(docs: list[Rendered], pad_id: int) -> dict:
    rows = pack(docs, sum(len(d.input_ids) for d in docs))  # all of them in one row
    return make_batches(rows, len(rows), pad_id, shuffle=False, seed=0, epoch=0)[0]


@torch.no_grad()
def mean_loss(model, batch: dict, device: torch.device) -> float:
    return float(summed_loss(model, _to(batch, device))) / max(loss_tokens(batch), 1)


def _lora_a_exempt(name: str, params: dict) -> bool:
    if ".lora_A" not in name:
        return False
    b = params.get(name.replace(".lora_A", ".lora_B"))
    return b is not None and not bool(b.detach().any())


def _scaled_backward(model, batch: dict, count: int, scale: LossScale | None) -> torch.Tensor:
    """Backward of the mean loss as a training step runs it; the summed loss. In fp16 the loss is multiplied by the
    loss scale, halved (and the pass run again) while the gradients overflow, as a run's first steps do, and the
    gradients divided by it again, so that a gradient small enough to underflow unscaled is not called zero."""
    params = [p for p in model.parameters() if p.requires_grad]
    while True:
        loss = summed_loss(model, batch)
        (loss * (scale.scale if scale else 1.0) / max(count, 1)).backward()
        if scale is None or scale.scale <= 1 or not math.isfinite(loss.item()):
            return loss
        if all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None):
            scale.unscale_(params)
            return loss
        model.zero_grad(set_to_none=True)
        scale.update(overflow=True)


def forward_backward(built, batch: dict) -> list[CheckItem]:
    """One training-mode forward/backward: finite loss, a finite non-zero gradient per trainable tensor, memory."""
    model, device = built.model, built.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    count = loss_tokens(batch)
    loss = _scaled_backward(model, _to(batch, device), count, LossScale() if uses_loss_scale(built.dtype) else None)
    mean = loss.item() / max(count, 1)
    items = []
    if cuda:
        torch.cuda.synchronize(device)
        allocated, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
        total = torch.cuda.get_device_properties(device).total_memory
        status = "warn" if reserved > 0.9 * total else "info"
        items.append(
            CheckItem(
                "peak memory (CUDA)",
                status,
                f"one training step of micro-batch {batch['input_ids'].shape[0]}: {allocated / 2**30:.2f} GiB allocated, "
                f"{reserved / 2**30:.2f} GiB reserved of {total / 2**30:.1f} GiB",
            )
        )
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    bad, exempt = [], 0
    for name, p in params.items():
        if _lora_a_exempt(name, params):
            exempt += 1
            continue
        if p.grad is None:
            bad.append(f"{name}: no gradient (not used by the forward pass)")
            continue
        norm = float(p.grad.detach().float().norm())
        if norm != norm or norm in (float("inf"), float("-inf")):
            bad.append(f"{name}: gradient norm {norm}")
        elif norm == 0.0:
            bad.append(f"{name}: gradient is zero")
    model.zero_grad(set_to_none=True)
    loss_item = CheckItem(
        "forward/backward loss",
        "pass" if mean == mean and abs(mean) != float("inf") else "fail",
        f"{mean:.4f} nats per token over {count} loss tokens of the first micro-batch",
    )
    # LoRA A's gradient is B's transpose times the output's: zero while B holds its starting zeros
    note = (
        f"; not checked: {counted(exempt, 'LoRA A tensor')}, whose gradient is zero at the first step as LoRA B "
        "starts at zero (it grows once B moves)"
        if exempt
        else ""
    )
    checked = len(params) - exempt
    grads = CheckItem(
        "gradients",
        "fail" if bad else "pass",
        f"{len(bad)} of {counted(checked, 'checked trainable tensor')} have a bad gradient{note}"
        if bad
        else f"finite, non-zero gradients in all {counted(checked, 'checked trainable tensor')}{note}",
        bad[:5],
    )
    return [loss_item, grads, *items]


def compared(name: str, what: str, a: float, b: float, dtype: torch.dtype) -> CheckItem:
    tol = tolerance(dtype)
    ok = _close(a, b, tol)
    return CheckItem(
        name,
        "pass" if ok else "fail",
        f"{what}: {a:.6f} vs {b:.6f} nats per token, difference {abs(a - b):.2e} "
        f"({'within' if ok else 'beyond'} {tol:g} x max(1, loss) for {str(dtype).replace('torch.', '')})",
    )


def eval_comparisons(built, batch: dict, pad_id: int) -> tuple[list[CheckItem], float]:
    """Padded vs row by row, and (fast path) packed vs padded; returns them and the padded loss, for compare_paths."""
    model, device, dtype = built.model, built.device, built.dtype
    model.eval()
    docs = documents(batch)
    whole = mean_loss(model, padded(docs, pad_id), device)
    items = []
    if len(docs) > 1:
        per_row = [(summed_loss_of(model, padded([d], pad_id), device), loss_tokens(padded([d], pad_id))) for d in docs]
        alone = sum(s for s, _ in per_row) / max(sum(n for _, n in per_row), 1)
        items.append(
            compared("padding (model)", f"{len(docs)} rows padded together vs each alone", whole, alone, dtype)
        )
    if built.impl == "fast":
        items.append(
            compared(
                "packing",
                f"{counted(len(docs), 'example')} packed in one row vs padded rows",
                mean_loss(model, packed(docs, pad_id), device),
                whole,
                dtype,
            )
        )
    model.train()
    return items, whole


@torch.no_grad()
def summed_loss_of(model, batch: dict, device: torch.device) -> float:
    return float(summed_loss(model, _to(batch, device)))


def dtype_items(built: BuiltModel) -> list[CheckItem]:
    """What train says at its start about the dtype model.dtype auto chose (a GPU without native bf16), where it
    says anything (`BuiltModel.dtype_note`)."""
    return [CheckItem("model dtype", "info", built.dtype_note)] if built.dtype_note else []


def untrained_item(report: UntrainedReport, federation: bool = False) -> CheckItem:
    """`federation`: the report covers every token of the tokenizer, as a federation repairs them."""
    status = "pass" if not report.tokens or report.repaired else "fail"
    return CheckItem("untrained tokens", status, report.summary(federation).removeprefix("untrained tokens: "))


def task_step(task, model: torch.nn.Module, batch: dict) -> tuple[float, bool]:
    """One forward/backward of `batch` through a task's loss in training mode: the mean loss, and whether it and
    every gradient are finite."""
    model.train()
    loss_sum, _ = task.loss(model, batch)
    loss = loss_sum / task.count(batch)
    loss.backward()
    value = float(loss.detach())
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    return value, math.isfinite(value) and all(bool(torch.isfinite(g).all()) for g in grads)
