"""Prompt building: a pure function of (task, input), shared by serving and training.

Training must call `build_messages` and `serialize_output` exactly as serving does, so
that what an adapter learns is what it is asked (no train/serve skew).
"""

from __future__ import annotations

import json
import secrets
import threading
from typing import Any, Protocol

from app.engine.models import missing_model_folder
from app.settings import ConfigurationError
from app.tasks.ranges import canonical_number, is_number
from app.tasks.schema import DECIMALS, flag_tail
from app.tasks.types.base import Task

Message = dict[str, str]


def canonical(value: Any, schema: dict[str, Any]) -> Any:
    """Reorder object keys as the schema declares them: the order the decoding grammar emits."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        ordered = {k: canonical(value[k], props[k]) for k in props if k in value}
        ordered.update({k: v for k, v in value.items() if k not in props})
        return ordered
    if isinstance(value, list) and "prefixItems" in schema:
        prefix = schema["prefixItems"]
        head = [canonical(v, sub) for v, sub in zip(value, prefix, strict=False)]
        tail = value[len(prefix) :]
        flags = flag_tail(schema)
        if flags is not None:
            # Flags as the grammar writes them: each once, in declared order.
            tail = [f for f in flags if f in tail] + [v for v in tail if v not in flags]
        return head + tail
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [canonical(v, schema["items"]) for v in value]
    if schema.get("type") in ("integer", "number") and is_number(value):
        return canonical_number(value, int(schema.get(DECIMALS, 0)))
    for alternative in schema.get("anyOf", []):
        if isinstance(value, dict) and "properties" in alternative:
            return canonical(value, alternative)
    return value


def serialize_output(schema: dict[str, Any], output: dict[str, Any]) -> str:
    """Canonical model output: compact JSON, keys in schema order, UTF-8 characters kept."""
    return json.dumps(canonical(output, schema), ensure_ascii=False, separators=(",", ":"))


def system_prompt(task: Task, part: str = "") -> str:
    lines = [task.manifest.instructions.strip(), *task.kind.format_lines(task, part)]
    return "\n".join(lines)


def build_messages(task: Task, payload: dict[str, str], part: str = "") -> list[Message]:
    """Chat messages for one input: instructions, few-shot examples, then the input."""
    kind = task.kind
    messages: list[Message] = [{"role": "system", "content": system_prompt(task, part)}]
    for example in task.manifest.examples:
        output = kind.example_output(task, example.output, part)
        messages.append({"role": "user", "content": kind.user_prompt(example.input)})
        messages.append({"role": "assistant", "content": serialize_output(task.schema, output)})
    messages.append({"role": "user", "content": kind.user_prompt(payload)})
    return messages


class ChatTokenizer(Protocol):
    """What the gateway needs of the served model's tokenizer: prompts in, answers' tokens back."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def encode(self, text: str, **kwargs: Any) -> list[int]: ...

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...

    def decode(self, ids: list[int], **kwargs: Any) -> str: ...

    @property
    def all_special_ids(self) -> list[int]: ...


class PromptRenderer:
    """Renders messages with the model's own chat template, thinking disabled."""

    def __init__(self, tokenizer: ChatTokenizer):
        self.tokenizer = tokenizer
        # transformers sets `split_special_tokens` on the shared Rust tokenizer before each encode
        # (state, not an argument): prompts built in several threads at once (the runner builds
        # each generation's off the event loop) must not interleave, or one prompt's template
        # is encoded with another's setting and its `<|im_end|>` becomes plain text.
        self._encoding = threading.Lock()

    def render(self, messages: list[Message]) -> str:
        # Qwen3 thinks by default; a <think> block would fight the output constraint.
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        return str(text)

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """The prompt's token ids. Its structure (special tokens such as `<|im_start|>`) comes
        from the chat template alone: every message's content is text, whatever it spells, so a
        note holding `<|im_end|>` cannot end its turn and write one of its own."""
        marks = [f"\ue000{secrets.token_hex(8)}\ue000" for _ in messages]
        rendered = self.render([{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)])
        ids: list[int] = []
        with self._encoding:
            for message, mark in zip(messages, marks, strict=True):
                template, _, rendered = rendered.partition(mark)
                ids += self.tokenizer.encode(template, add_special_tokens=False, split_special_tokens=False)
                ids += self.tokenizer.encode(message["content"], add_special_tokens=False, split_special_tokens=True)
            return ids + self.tokenizer.encode(rendered, add_special_tokens=False, split_special_tokens=False)


def load_renderer(model_path: str) -> PromptRenderer:
    from transformers import AutoTokenizer

    if reason := missing_model_folder(model_path):
        raise ConfigurationError(reason)
    try:
        return PromptRenderer(AutoTokenizer.from_pretrained(model_path))
    except (OSError, ValueError) as exc:
        # Offline and air-gapped deployments: a wrong path is the common case; say which.
        raise ConfigurationError(f"cannot load the tokenizer of model {model_path!r}: {exc}") from exc
