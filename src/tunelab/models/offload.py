"""Layer inputs parked in pinned host memory between forward and backward (activation offload).

Per-layer checkpointing keeps one (B, T, d) input per decoder layer on the GPU: 2 GiB for a 7B model at 4 x 2048
tokens, a seventh of a LoRA run's memory. With offload each layer's input is copied to pinned host memory on a side
stream (overlapping the next layers' compute), and in backward it is brought back one layer ahead of its
recomputation, so the copies hide behind the matmuls of the layer being recomputed. `models.recompute` drives it.

Where no dropout draws (so the halves of a layer can be replayed in any order), each layer's midpoint
h = x + attn(norm(x)) is parked too: backward then runs the MLP from h while x comes home, and recomputes attention
for its gradients only, skipping o_proj's GEMM and the residual add (2% of a 7B step). Twice the copies, on the
same two landing buffers (h's and x's).
"""

from __future__ import annotations

import torch


class HostActivations:
    """Layer inputs of one forward pass, parked on the host and fetched back in reverse order."""

    def __init__(
        self,
        device: torch.device,
        stream: torch.cuda.Stream,
        buffers: list[torch.Tensor | None] | None = None,
        with_mid: bool = False,
    ):
        self.device = device
        # Keys are (layer index, "x") for a layer's input and (layer index, "h") for its midpoint. With midpoints
        # (`with_mid`), h lands in buffer 0 and x in buffer 1; without, inputs alternate between them by index.
        self.with_mid = with_mid
        self.stream = stream  # one side stream for the model's life: each stream has its own allocator pool
        # Two device buffers that fetched inputs land in, alternately, kept by the caller from step to step, so that
        # no long-lived allocation is made amid a layer's backward temporaries. (Measured alone they left the
        # reserved peak unchanged; what closed the 1.2 GiB gap to the allocated peak was freeing in stream order,
        # see `park`.)
        self.buffers = buffers if buffers is not None else [None, None]
        # key -> (host copy, its copy-done event, the device tensor while the copy may still read it)
        self.parked: dict[tuple[int, str], tuple[torch.Tensor, torch.cuda.Event, torch.Tensor | None]] = {}
        self.fetched: dict[tuple[int, str], tuple[torch.Tensor, torch.cuda.Event, torch.Tensor]] = {}

    def park(self, key: tuple[int, str], x: torch.Tensor) -> None:
        self._release_copied()
        host = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # x is complete
        with torch.cuda.stream(self.stream):
            host.copy_(x, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        # x stays referenced until the next layer's park, then the compute stream waits for its copy and drops it.
        # Not `record_stream`: the CPU runs many layers ahead of the GPU, so blocks freed with a recorded stream sat
        # in the allocator's pending list, unusable, while the segments grew around them (reserved 1.2 GiB above
        # allocated for a 7B model). Waiting costs nothing: the copy of layer i's input runs beside layer i + 1.
        self.parked[key] = (host, done, x)

    def _release_copied(self) -> None:
        """Give the parked device tensors back to the compute stream, ordered after their copies to the host."""
        current = torch.cuda.current_stream(self.device)
        for key, (host, done, x) in list(self.parked.items()):
            if x is not None:
                current.wait_event(done)
                self.parked[key] = (host, done, None)

    def fetch(self, key: tuple[int, str]) -> None:
        """Start copying `key`'s tensor back to the device (no-op if absent or already under way)."""
        if key not in self.parked:
            return
        host, done, x = self.parked.pop(key)
        if x is not None:  # still referenced: the compute stream must not reuse its memory before the copy read it
            torch.cuda.current_stream(self.device).wait_event(done)
            del x
        # Buffers live on the compute stream's pool; they are filled on the side stream.
        index, part = key
        x = self._buffer((0 if part == "h" else 1) if self.with_mid else index % 2, host)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the block may still be read by earlier work
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(done)
            x.copy_(host, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        self.fetched[key] = (x, ready, host)  # the host buffer lives until the copy is waited on

    def reserve(self, like: torch.Tensor) -> None:
        """Size both landing buffers for inputs like `like` now, before anything else of the step is allocated."""
        for slot in (0, 1):
            self._buffer(slot, like)

    def _buffer(self, slot: int, like: torch.Tensor) -> torch.Tensor:
        """Buffer `slot` viewed as `like` (grown when too small or of another dtype). Safe to refill: the copy into it
        waits for all compute queued so far, which includes the last reads of what it held."""
        flat = self.buffers[slot]
        if flat is None or flat.numel() < like.numel() or flat.dtype != like.dtype:
            self.buffers[slot] = flat = None  # free the old one first
            self.buffers[slot] = flat = torch.empty(like.numel(), dtype=like.dtype, device=self.device)
        return flat[: like.numel()].view(like.shape)

    def take(self, key: tuple[int, str]) -> torch.Tensor:
        self._release_copied()
        self.fetch(key)
        x, ready, _ = self.fetched.pop(key)
        torch.cuda.current_stream(self.device).wait_event(ready)
        return x
