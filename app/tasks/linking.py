"""Entity linking: the code of a terminology an entity denotes, chosen by the model among the
fuzzy matcher's candidates, or none.

After a note's entities are read and grounded, each entity of a coded label gets one small
constrained generation: the prompt shows the entity, a little of the note around it and the
candidates as `code: display` lines; the schema's only values are those codes and "none", so
the grammar compiled from it cannot write a code the file lacks or the matcher did not
offer. "none" is an answer: the entity is returned with no codes. An entity the matcher finds
no candidate for costs no generation and gets no codes.

Linking runs on the task's own adapter: the request already holds its lease (no second
adapter slot in the engine's batch, no adapter to ship per terminology), and the choice is
grammar-bounded, so an adapter never trained to link still answers a valid code or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from jsonschema import Draft202012Validator

from app.tasks.grounding import Span
from app.tasks.terminology import NONE, Candidate, Coding
from app.tasks.types.base import Answer, Ask, Task

CONTEXT_CHARS = 120  # of the note on each side of the entity: enough for its sentence

LINK_INSTRUCTIONS = (
    "Choose the code that the entity in the clinical text denotes, among the candidate codes listed, "
    'or "none" if no candidate means it.\n'
    'Answer with one JSON object only: {"code": code}.'
)


class HasEntities(Protocol):
    entities: list[Span]


@dataclass(frozen=True)
class LinkAsk:
    """One entity's linking generation: its index in the result's entities, the ask, the
    candidates it chooses among."""

    index: int
    ask: Ask
    candidates: tuple[Candidate, ...]


def link_schema(codes: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"code": {"enum": [*codes, NONE]}},
        "required": ["code"],
        "additionalProperties": False,
    }


def link_messages(span: Span, context: str, candidates: Sequence[Candidate]) -> list[dict[str, str]]:
    lines = [f"- {c.concept.code}: {c.concept.display}" for c in candidates]
    user = "\n".join(
        [f"Entity: {span.text}", f"Label: {span.label}", f"Context: {context}", "Candidates:", *lines, f"- {NONE}"]
    )
    return [{"role": "system", "content": LINK_INSTRUCTIONS}, {"role": "user", "content": user}]


def context_of(text: str, span: Span) -> str:
    start, end = max(span.start - CONTEXT_CHARS, 0), min(span.end + CONTEXT_CHARS, len(text))
    return " ".join(text[start:end].split())


def link_asks(task: Task, text: str, entities: Sequence[Span]) -> list[LinkAsk]:
    """The generations the entities of `text` need: one per entity whose label is coded and
    whose text the matcher finds candidates for."""
    asks: list[LinkAsk] = []
    for index, span in enumerate(entities):
        coding = task.coding.get(span.label)
        if coding is None:
            continue
        found = coding.terminology.candidates(span.text, task.manifest.languages, coding.candidates, coding.min_score)
        if not found:
            continue
        schema = link_schema([c.concept.code for c in found])
        messages = link_messages(span, context_of(text, span), found)
        ask = Ask({"text": span.text}, schema, Draft202012Validator(schema), "", messages=messages)
        asks.append(LinkAsk(index, ask, tuple(found)))
    return asks


def chosen(link: LinkAsk, answer: Answer) -> tuple[Coding, ...]:
    """The coding the answer chose, with the probability of its tokens; none if it abstained."""
    code = answer.output["code"]
    if code == NONE:
        return ()
    concept = next(c.concept for c in link.candidates if c.concept.code == code)
    confidence = answer.confidence("code")
    return (Coding(concept.system, concept.code, concept.display, confidence),)


def with_codes(result: HasEntities, links: Sequence[LinkAsk], answers: Sequence[Answer]) -> None:
    """Put each linked entity's codes on it (relations find their arguments by offsets and
    label, so replacing the span objects keeps them)."""
    entities = list(result.entities)
    for link, answer in zip(links, answers, strict=True):
        entities[link.index] = replace(entities[link.index], codes=chosen(link, answer))
    result.entities = entities
