"""The model behind the server: loaded once, one generation at a time.

Requests are queued on a lock rather than batched: a run is usually a small model on a CPU or one GPU, where one
sequence at a time keeps the latency of each answer low and the memory flat, and the transformers generation loop
this uses is not safe to enter twice at once on one model. A streamed answer holds the lock until its last token;
a client that disconnects stops its generation at the next token (a stopping criterion watches a flag), so an
abandoned stream does not keep the queue waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tunelab.data.render import render_prompt
from tunelab.infer.generate import GenerationSettings, fit_context
from tunelab.infer.run import LoadedRun


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Text up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class _Cancelled:
    """A transformers stopping criterion that ends generation once `event` is set (client gone, stop string seen)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Engine:
    def __init__(self, run: LoadedRun, model_id: str):
        self.run = run
        self.model_id = model_id
        self.lock = threading.Lock()  # one generation at a time; the others wait here, in arrival order
        self.created = int(time.time())

    def _prompt(self, messages: list[dict], settings: GenerationSettings) -> tuple[torch.Tensor, GenerationSettings]:
        """The prompt's ids, and the settings with max_new_tokens cut to the room the model's context leaves
        (ContextTooLong when it leaves none)."""
        if self.run.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.run.system_prompt}, *messages]  # as in training
        ids = render_prompt(messages, self.run.tokenizer, self.run.template)
        settings = fit_context(self.run.model, len(ids), settings)
        return torch.tensor([ids], device=self.run.device), settings

    def _kwargs(self, prompt: torch.Tensor, settings: GenerationSettings, cancel: threading.Event, seed: int | None):
        from transformers import StoppingCriteriaList

        if seed is not None:
            torch.manual_seed(seed)
        return settings.kwargs(self.run.template, self.run.tokenizer) | {
            "input_ids": prompt,
            "attention_mask": torch.ones_like(prompt),
            "stopping_criteria": StoppingCriteriaList([_Cancelled(cancel)]),
        }

    def _finish(self, new_ids: list[int], settings: GenerationSettings) -> str:
        stops = set(self.run.template.stop_token_ids) | {self.run.tokenizer.eos_token_id}
        return "stop" if (new_ids and new_ids[-1] in stops) or len(new_ids) < settings.max_new_tokens else "length"

    @torch.no_grad()
    def complete(
        self, messages: list[dict], settings: GenerationSettings, stop: list[str], seed: int | None = None
    ) -> Completion:
        prompt, settings = self._prompt(messages, settings)
        with self.lock:
            out = self.run.model.generate(**self._kwargs(prompt, settings, threading.Event(), seed))
        new = out[0, prompt.shape[1] :].tolist()
        text = self.run.tokenizer.decode(new, skip_special_tokens=True)
        text, stopped = _cut_at_stop(text, stop)
        reason = "stop" if stopped else self._finish(new, settings)
        return Completion(text.strip(), prompt.shape[1], len(new), reason)

    def stream(
        self, messages: list[dict], settings: GenerationSettings, stop: list[str], seed: int | None = None
    ) -> Iterator[str | Completion]:
        """Text pieces as they are generated, then a Completion (its text empty) with the counts and finish reason.
        Closing the iterator early (the client left) cancels the generation. A conversation too long for the model
        is refused here (ContextTooLong), before the response starts."""
        prompt, settings = self._prompt(messages, settings)
        return self._pieces(prompt, settings, stop, seed)

    def _pieces(
        self, prompt: torch.Tensor, settings: GenerationSettings, stop: list[str], seed: int | None
    ) -> Iterator[str | Completion]:
        from transformers import TextIteratorStreamer

        cancel = threading.Event()
        streamer = TextIteratorStreamer(self.run.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}

        def work():
            try:
                with torch.no_grad():
                    result["out"] = self.run.model.generate(
                        **self._kwargs(prompt, settings, cancel, seed), streamer=streamer
                    )
            except BaseException as exc:  # surfaced to the request below
                result["error"] = exc
                streamer.end()

        with self.lock:
            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            sent, text, stopped, drained = 0, "", False, False
            try:
                for piece in streamer:
                    text += piece
                    visible, stopped = _cut_at_stop(text.lstrip(), stop)
                    if len(visible) > sent:
                        yield visible[sent:]
                        sent = len(visible)
                    if stopped:
                        break
                else:
                    drained = True
            finally:
                cancel.set()  # ends the generation at its next token when a stop string or a closed client ended us
                if not drained:
                    for _ in streamer:  # until the streamer's end signal, so the worker is done before the lock goes
                        pass
                worker.join()
        if "error" in result:
            raise result["error"]
        new = result["out"][0, prompt.shape[1] :].tolist()
        yield Completion("", prompt.shape[1], len(new), "stop" if stopped else self._finish(new, settings))
