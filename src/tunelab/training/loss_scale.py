"""Dynamic loss scaling for fp16 training of adapters (LoRA, QLoRA, heads), whose trainable weights are fp32.

In fp16 the gradients flowing back through the frozen body's activations underflow: fp16's smallest normal number is
6.1e-5, and a token's share of the loss is smaller than that once it is divided by the step's token count. So the
step multiplies the loss by `scale` before backward (a power of two: exact), divides the fp32 gradients by it again
before clipping, and moves the scale as torch.amp.GradScaler does: halved after a step whose gradients overflowed
(that step's update is skipped), doubled after `GROWTH_INTERVAL` good steps in a row.

This is GradScaler's rule, kept here rather than GradScaler itself for two reasons. The overflow test is the
gradient norm the guard computes anyway (training/guard.py): one number the same on every rank, FSDP2 shards
included, where GradScaler's per-device flags differ between shards and the ranks could disagree about skipping.
And the state is two plain numbers that the loop's position carries into every checkpoint (JSON keeps a float
exactly), so a resumed run scales its steps as the uninterrupted one does.

An overflow skip is normal fp16 behaviour (the scale starts high on purpose): it is counted (`overflow_steps` in
the run log and run.json), not treated as the guard's failure. A loss that is not finite before any scaling is, and
so is an overflow at a scale of 1 or less, where no scaling is left to undo.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

INIT_SCALE = 2.0**16  # GradScaler's default: start high, halve until the gradients fit
GROWTH_INTERVAL = 2000  # good steps in a row before the scale doubles (GradScaler's default)


@dataclass
class LossScale:
    scale: float = field(default_factory=lambda: INIT_SCALE)
    good_steps: int = 0  # finite steps since the scale last changed

    def unscale_(self, params: list[torch.nn.Parameter]) -> None:
        """Divide every gradient by the scale (a power of two: exact in fp32)."""
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale)

    def update(self, overflow: bool) -> None:
        """After a step: halve the scale when its gradients overflowed, double it after GROWTH_INTERVAL good ones."""
        if overflow:
            self.scale, self.good_steps = self.scale / 2, 0
            return
        self.good_steps += 1
        if self.good_steps == GROWTH_INTERVAL:
            self.scale, self.good_steps = self.scale * 2, 0

    def saved(self) -> dict:
        """What a checkpoint's position keeps (`loss_scale`)."""
        return {"scale": self.scale, "good_steps": self.good_steps}

    @classmethod
    def resumed(cls, position: dict) -> LossScale:
        """The scale a run's position holds; a fresh one for a run that did not keep it."""
        saved = position.get("loss_scale") or {}
        return cls(float(saved.get("scale", INIT_SCALE)), int(saved.get("good_steps", 0)))


def uses_loss_scale(dtype: torch.dtype) -> bool:
    """fp16 training scales its loss; bf16 and fp32 have fp32's exponent range and need not."""
    return dtype == torch.float16
