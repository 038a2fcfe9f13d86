"""A request's values for the chat template's own variables: vLLM's and SGLang's `chat_template_kwargs`, and
OpenAI's `reasoning_effort` where the template reads it.

A Hugging Face chat template may read variables beyond the conversation: Qwen3's `enable_thinking` (false: the
prompt ends with an empty thought, so the model answers without one), gpt-oss's `reasoning_effort`. vLLM passes a
request's `chat_template_kwargs` to the render as they are, and a key the template never reads changes nothing. Here
such a key is refused instead, as every option this server would not honour is: the run's template says which
variables it reads (`Template.reads`), a named template (chatml, llama2, alpaca) none. So are a key that names one of
the render's own arguments (`messages`, `add_generation_prompt`, `eos_token`: RENDER_ARGUMENTS) and a value that is
not plain JSON (JSON's own types always are: the check is for the Python API's callers).
"""

from __future__ import annotations

import json

from tunelab.data.templates import RENDER_ARGUMENTS, Template
from tunelab.server.messages import Refused

# OpenAI's values of reasoning_effort (its API reference and the `openai` client's ReasoningEffort type: "max" was
# added after "xhigh"); each model takes some of them, and a template reads what its model was trained on
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


def _plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


def template_variables(template: Template, kwargs: dict | None, effort) -> dict | None:
    """The variables to render the prompt with, from a request's `chat_template_kwargs` and `reasoning_effort`
    (None: not given); Refused (its param the field) for one the run's template would not honour."""
    reads = template.reads()
    where = (
        f"the run's prompt template ('{template.name}') reads no variables"
        if reads == frozenset()
        else f"the run's prompt template ('{template.name}') reads {', '.join(sorted(reads))}"
        if reads
        else ""
    )
    variables = {}
    for key, value in (kwargs or {}).items():
        param = f"chat_template_kwargs.{key}"
        if key in RENDER_ARGUMENTS:
            raise Refused(
                param,
                f"{param}: {key!r} is set by the server's render of the conversation itself (from the request's "
                "messages, tools and the run's tokenizer), not by a request; leave it out.",
            )
        if not _plain(value):
            raise Refused(param, f"{param}: a value must be plain JSON (null, bool, number, string, list, object)")
        if reads is not None and key not in reads:
            raise Refused(param, f"{param}: {where}, not {key!r}, so it would change nothing; leave it out.")
        variables[key] = value
    if effort is not None:
        if not isinstance(effort, str) or effort not in EFFORTS:
            raise Refused(
                "reasoning_effort",
                f"reasoning_effort: invalid value {json.dumps(effort)[:80]}; allowed: {', '.join(EFFORTS)} (OpenAI's "
                "values, as text)",
            )
        if reads is not None and "reasoning_effort" not in reads:
            raise Refused(
                "reasoning_effort",
                f"reasoning_effort: {where}, not reasoning_effort, so the model cannot be told an effort; leave it "
                "out (a template with a switch of its own takes it in chat_template_kwargs, such as Qwen3's "
                '{"enable_thinking": false}).',
            )
        if variables.get("reasoning_effort", effort) != effort:
            raise Refused("reasoning_effort", "reasoning_effort differs from chat_template_kwargs.reasoning_effort")
        variables["reasoning_effort"] = effort
    return variables or None
