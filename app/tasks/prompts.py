"""Prompt building: a pure function of (task, input), shared by serving and training.

Training must call `build_messages` and `serialize_output` exactly as serving does, so
that what an adapter learns is what it is asked (no train/serve skew).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from app.tasks.manifests import Task
from app.settings import ConfigurationError

Message = dict[str, str]


def canonical(value: Any, schema: dict[str, Any]) -> Any:
    """Reorder object keys as the schema declares them: the order the decoding grammar emits."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        ordered = {k: canonical(value[k], props[k]) for k in props if k in value}
        ordered.update({k: v for k, v in value.items() if k not in props})
        return ordered
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [canonical(v, schema["items"]) for v in value]
    for alternative in schema.get("anyOf", []):
        if isinstance(value, dict) and "properties" in alternative:
            return canonical(value, alternative)
    return value


def serialize_output(task: Task, output: dict[str, Any]) -> str:
    """Canonical model output: compact JSON, keys in schema order, UTF-8 characters kept."""
    return json.dumps(canonical(output, task.schema), ensure_ascii=False, separators=(",", ":"))


def system_prompt(task: Task) -> str:
    m = task.manifest
    lines = [m.instructions.strip()]
    if m.labels:
        lines.append("")
        lines.append("Labels:")
        lines += [f"- {label.name}: {label.description}".rstrip(": ") for label in m.labels]
    if m.attributes:
        lines.append("")
        lines.append("Attributes (true or false for each entity):")
        lines += [f"- {attr.name}: {attr.description}".rstrip(": ") for attr in m.attributes]
    lines.append("")
    lines.append("Answer with one JSON object only.")
    return "\n".join(lines)


def user_prompt(task: Task, payload: dict[str, str]) -> str:
    if task.type == "qa":
        return f"Context:\n{payload['context']}\n\nQuestion: {payload['question']}"
    return f"Text:\n{payload['text']}"


def build_messages(task: Task, payload: dict[str, str]) -> list[Message]:
    """Chat messages for one input: instructions, few-shot examples, then the input."""
    messages: list[Message] = [{"role": "system", "content": system_prompt(task)}]
    for example in task.manifest.examples:
        messages.append({"role": "user", "content": user_prompt(task, example.input)})
        messages.append({"role": "assistant", "content": serialize_output(task, example.output)})
    messages.append({"role": "user", "content": user_prompt(task, payload)})
    return messages


class ChatTokenizer(Protocol):
    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def encode(self, text: str, **kwargs: Any) -> list[int]: ...


class PromptRenderer:
    """Renders messages with the model's own chat template, thinking disabled."""

    def __init__(self, tokenizer: ChatTokenizer):
        self.tokenizer = tokenizer

    def render(self, messages: list[Message]) -> str:
        # Qwen3 thinks by default; a <think> block would fight the output constraint.
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        return str(text)

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer.encode(prompt, add_special_tokens=False))


def load_renderer(model_path: str) -> PromptRenderer:
    from transformers import AutoTokenizer

    if model_path.startswith(("/", ".", "~")) and not Path(model_path).expanduser().is_dir():
        raise ConfigurationError(f"model folder {model_path!r} does not exist (is the models volume mounted?)")
    try:
        return PromptRenderer(AutoTokenizer.from_pretrained(model_path))
    except (OSError, ValueError) as exc:
        # Offline and air-gapped deployments: a wrong path is the common case; say which.
        raise ConfigurationError(f"cannot load the tokenizer of model {model_path!r}: {exc}") from exc
