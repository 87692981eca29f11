"""Gold answers with their grammars, as serving decodes them, for the grammar benchmarks.

Every shipped task's synthetic notes (`examples_for_task`, the generator training uses), cut
into chunks and asks as serving cuts them (`model_outputs`); each ask's grammar as the runner
compiles it (`compile_grammar(ask.schema, ask.source)`), and its gold answer serialized as the
model writes it (`serialize_output`), tokenized canonically by the real Qwen3 tokenizer, then
the end-of-sequence token. The llguidance tokenizer is built as vLLM's guidance backend builds
it: `from_tokenizer(tokenizer, max(vocab_size, len(tokenizer)))` with Qwen3-1.7B's 151,936
embedding rows, so a mask is as wide as the engine's.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.settings import Settings
from app.tasks.grammar import compile_grammar
from app.tasks.manifests import load_tasks
from app.tasks.prompts import serialize_output
from app.training.datasets import load_records, model_outputs
from app.training.synthetic import examples_for_task, write_jsonl

QWEN3_1_7B_VOCAB = 151_936


@dataclass(frozen=True)
class Case:
    task: str
    type: str  # the task type: ner, qa, classification, relations, form
    grammar: str
    tokens: tuple[int, ...]  # the gold answer's canonical tokens, end of sequence last


def qwen3_tokenizers() -> tuple[Any, Any]:
    """(HF fast tokenizer, llguidance LLTokenizer) for the real Qwen3 vocabulary."""
    from llguidance.hf import from_tokenizer

    from tests.support.qwen3 import qwen3_tokenizer

    tokenizer = qwen3_tokenizer()
    return tokenizer, from_tokenizer(tokenizer, max(QWEN3_1_7B_VOCAB, len(tokenizer)))


def gold_cases(tokenizer: Any, n_notes: int, seed: int = 0, tasks: Iterable[str] | None = None) -> list[Case]:
    """One case per generation serving makes for `n_notes` synthetic notes of each shipped task."""
    settings = Settings()
    loaded = load_tasks(settings.tasks_dir, settings.schemas_dir)
    wanted = set(tasks) if tasks is not None else set(loaded)
    eos = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    cases: list[Case] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, task in sorted(loaded.items()):
            if name not in wanted:
                continue
            path = Path(tmp) / f"{name}.jsonl"
            write_jsonl(path, examples_for_task(task, n_notes, seed))
            for record in load_records(task, path):
                for ask, output in model_outputs(task, record):
                    ids = tokenizer.encode(serialize_output(ask.schema, output), add_special_tokens=False)
                    cases.append(Case(name, task.type, compile_grammar(ask.schema, ask.source), (*ids, eos)))
    return cases


def emit(report: dict[str, Any], out: str | None) -> None:
    """Print the report as JSON, and write it to `out` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
