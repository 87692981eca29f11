"""The serving path at volume, minus the engine: every document goes through the in-process
twin of an HTTP POST (`app.tasks.calls.call_json`: request model, input limits, admission,
chunking with the task's settings, the asks, `TaskRunner.generation_request` with the real
Qwen3 tokenizer, then parsing, schema validation, grounding, merging and the response model),
with an engine that decodes each request by a seeded random walk over its llguidance mask.
The responses are then checked for every guarantee the README states (`check_response`, which
the live e2e volume test applies to real vLLM's answers too).

The walk (`Walker.walk`) at each step takes the token mask llguidance computes for the
request's grammar over the real Qwen3 vocabulary and draws one allowed token:

- with probability 1/4, uniformly among all allowed tokens;
- otherwise by phase. Each generation draws a length L, log-uniform on [1, min(max_tokens,
  512)]. Before L tokens (growing) it draws uniformly among the allowed tokens with the fewest
  closing brackets (`]`, `}`; the end of sequence counts as more than any): lists get more
  items, strings run on; but after a digit, a token that is not a digit comes first, so that
  numbers (relation arguments, form values) stay short and mostly name entities written. From
  L on (closing) it takes the end of sequence when allowed, else draws uniformly among the
  allowed tokens with the most closing brackets (with none, those with a `"`; with none, all).
- One generation in 200 is a long walk instead: growing until the grammar itself ends it
  (L infinite, no uniform steps), which checks that max_tokens holds on long answers.

The log-probability the engine reports for each token is the log of the probability the
walk gave it (a uniform step's share plus the phase's share), as vLLM reports those of a
model's masked distribution, so confidences are computed and checked too. A walk that does
not end within the request's max_tokens is returned with finish_reason "length" (the runner
then fails the request: a failure here); a token the matcher refuses fails the engine call.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import math
import random
import re
import shutil
import tempfile
import time
import traceback
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from app.engine.base import AdapterHandle, EngineError, GenerationRequest, GenerationResult
from app.problems import Problem
from app.settings import Settings
from app.tasks import grammar
from app.tasks.calls import call_json
from app.tasks.prompts import PromptRenderer
from app.tasks.ranges import is_number, scaled
from app.tasks.service import Service, build_service
from app.tasks.spec import FormItemSpec
from app.tasks.types.base import Task
from app.tasks.types.form import EVIDENCE_MAX_CHARS, TEXT_MAX_CHARS

# The longest piece (app/tasks/grammar.py): a letter with more marks than that is cut.
_PIECE_MAX_CHARS = int(getattr(grammar, "PIECE_MAX_CHARS", 32))
UNIFORM_SHARE = 0.25
MAX_GROW = 512
LONG_WALK_ONE_IN = 200

Failure = tuple[str, str]  # (kind, detail)


# -- the walk ------------------------------------------------------------------------------


@dataclass
class Walk:
    tokens: list[int]
    logprobs: list[float]
    ended: bool
    long: bool = False
    error: str | None = None


def _pick(words: np.ndarray[Any, Any], rng: random.Random) -> tuple[int, int]:
    """A uniformly drawn set bit of a packed (little-endian uint32) mask, and how many are set."""
    cum = np.cumsum(np.bitwise_count(words), dtype=np.int64)
    total = int(cum[-1])
    if total == 0:
        return -1, 0
    r = rng.randrange(total)
    at = int(np.searchsorted(cum, r, side="right"))
    within = r - (int(cum[at - 1]) if at else 0)
    word = int(words[at])
    for bit in range(32):
        if word >> bit & 1:
            if within == 0:
                return at * 32 + bit, total
            within -= 1
    raise AssertionError("unreachable")


def _has(words: np.ndarray[Any, Any], token: int) -> bool:
    return bool(int(words[token >> 5]) >> (token & 31) & 1)


class Walker:
    """Seeded random walks over the llguidance mask of a grammar, on the real Qwen3 vocabulary."""

    def __init__(self) -> None:
        from llguidance.hf import from_tokenizer

        from app.tasks.confidence import token_bytes
        from tests.support.qwen3 import qwen3_tokenizer

        self.tokenizer = qwen3_tokenizer()
        self.lltok = from_tokenizer(self.tokenizer)
        self.eos = int(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        vocab = self.lltok.vocab_size
        pieces = token_bytes(self.tokenizer, list(range(vocab)))
        closing = np.array([p.count(b"]") + p.count(b"}") for p in pieces])
        quote = np.array([b'"' in p for p in pieces])
        digit = np.array([bool(p) and p.isdigit() for p in pieces])
        special = np.zeros(vocab, dtype=bool)
        special[[i for i in self.tokenizer.all_special_ids if i < vocab]] = True

        def packed(selected: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
            bits = np.zeros(((vocab + 31) // 32) * 32, dtype=np.uint8)
            bits[:vocab] = selected
            return np.packbits(bits, bitorder="little").view(np.uint32)

        # Tokens by how many closing brackets they write (0, 1, 2, 3, 4 or more); specials in none.
        self.by_closing = [packed((np.minimum(closing, 4) == k) & ~special) for k in range(5)]
        self.quoting = packed(quote & (closing == 0) & ~special)
        self.digit = digit
        self.by_closing_not_digit = [packed((np.minimum(closing, 4) == k) & ~digit & ~special) for k in range(5)]

    def walk(self, grammar: str, max_tokens: int, rng: random.Random) -> Walk:
        import llguidance

        matcher = llguidance.LLMatcher(self.lltok, grammar, log_level=0)
        if matcher.is_error():
            return Walk([], [], False, error=f"grammar refused: {matcher.get_error()}")
        long_walk = rng.randrange(LONG_WALK_ONE_IN) == 0
        grow = math.inf if long_walk else int(math.exp(rng.random() * math.log(min(max_tokens, MAX_GROW))))
        uniform = 0.0 if long_walk else UNIFORM_SHARE
        out = Walk([], [], False, long=long_walk)
        while len(out.tokens) < max_tokens:
            allowed = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint32)
            if len(out.tokens) < grow:
                after_digit = bool(out.tokens) and bool(self.digit[out.tokens[-1]])
                subset = self._fewest_closing(allowed, after_digit)
            elif _has(allowed, self.eos):
                subset = np.zeros_like(allowed)
                subset[self.eos >> 5] = np.uint32(1 << (self.eos & 31))
            else:
                subset = self._most_closing(allowed)
            token, n_subset = _pick(subset, rng)
            if token < 0 or rng.random() < uniform:
                token, _ = _pick(allowed, rng)
            n_allowed = int(np.bitwise_count(allowed).sum())
            in_subset = n_subset > 0 and _has(subset, token)
            share = (uniform if n_subset else 1.0) / n_allowed + (1.0 - uniform) * in_subset / max(n_subset, 1)
            out.tokens.append(token)
            out.logprobs.append(math.log(min(share, 1.0)))
            if token == self.eos:
                out.ended = True
                return out
            if not matcher.consume_token(token):
                out.error = f"token {token} refused after {len(out.tokens) - 1}: {matcher.get_error()}"
                return out
        return out

    def _fewest_closing(self, allowed: np.ndarray[Any, Any], after_digit: bool) -> np.ndarray[Any, Any]:
        for mask in [*self.by_closing_not_digit, *self.by_closing] if after_digit else self.by_closing:
            subset: np.ndarray[Any, Any] = allowed & mask
            if subset.any():
                return subset
        return allowed

    def _most_closing(self, allowed: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        for mask in [*reversed(self.by_closing[1:]), self.quoting]:
            subset: np.ndarray[Any, Any] = allowed & mask
            if subset.any():
                return subset
        return allowed


@dataclass
class EngineTally:
    generations: int = 0
    tokens: int = 0
    long_walks: int = 0
    longest: int = 0
    errors: list[str] = field(default_factory=list)


class WalkEngine:
    """The Engine interface, answering every request with a seeded walk over its grammar."""

    def __init__(self, walker: Walker, seed: int = 0):
        self.walker = walker
        self.seed = seed
        self.salt = ""  # the document being run: its walks differ from another's with the same chunk
        self.tally = EngineTally()
        self.started = False
        self.failure: str | None = None

    @property
    def ready(self) -> bool:
        return self.started

    async def start(self) -> None:
        self.started = True

    async def shutdown(self) -> None:
        self.started = False

    async def load_adapter(self, adapter: AdapterHandle) -> None:
        return None

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        return None

    def tokenizer(self) -> Any | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"engine": "random walk over the llguidance mask"}

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        # Seeded by the request itself, not by the order the runner happens to send them.
        key = f"{self.seed}\0{self.salt}\0{request.max_tokens}\0{len(request.prompt_token_ids)}\0{request.grammar}"
        rng = random.Random(hashlib.blake2b(key.encode(), digest_size=8).digest())
        walk = self.walker.walk(request.grammar, request.max_tokens, rng)
        self.tally.generations += 1
        self.tally.tokens += len(walk.tokens)
        self.tally.longest = max(self.tally.longest, len(walk.tokens))
        self.tally.long_walks += walk.long
        if walk.error is not None:
            self.tally.errors.append(walk.error)
            raise EngineError(f"walk: {walk.error}")
        text_ids = walk.tokens[:-1] if walk.ended else walk.tokens
        text = self.walker.tokenizer.decode(text_ids)
        return GenerationResult(
            text=text,
            finish_reason="stop" if walk.ended else "length",
            prompt_tokens=len(request.prompt_token_ids),
            completion_tokens=len(walk.tokens),
            token_ids=tuple(walk.tokens),
            token_logprobs=tuple(walk.logprobs) if request.logprobs else None,
        )


# -- one document through the serving path ---------------------------------------------------


ENDPOINTS = {"ner": "ner", "qa": "qa", "classification": "classify", "relations": "relations", "form": "forms"}


def request_body(task: Task, doc_id: str, payload: Mapping[str, str]) -> dict[str, Any]:
    items_field = task.kind.items_field
    return {"task": task.name, items_field: [{"id": doc_id, **payload}]}


@dataclass
class Outcome:
    """What running some documents found."""

    documents: int = 0
    generations: int = 0
    tokens: int = 0
    long_walks: int = 0
    longest_walk: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # by kind (a document may have several)
    failed_documents: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # kind -> a few reproductions
    dropped: Counter[str] = field(default_factory=Counter)  # spans dropped by the service, by reason
    returned: Counter[str] = field(default_factory=Counter)  # entities, relations, filled items, ...
    seconds: float = 0.0  # wall time running the documents (summed over workers)
    cpu_seconds: float = 0.0  # CPU time of the processes running them (honest on a shared machine)

    def add(self, other: Outcome) -> None:
        self.documents += other.documents
        self.generations += other.generations
        self.tokens += other.tokens
        self.long_walks += other.long_walks
        self.longest_walk = max(self.longest_walk, other.longest_walk)
        self.failures.update(other.failures)
        self.failed_documents += other.failed_documents
        for kind, texts in other.examples.items():
            self.examples.setdefault(kind, []).extend(texts[: 3 - len(self.examples.get(kind, []))])
        self.dropped.update(other.dropped)
        self.returned.update(other.returned)
        self.seconds += other.seconds
        self.cpu_seconds += other.cpu_seconds

    def fail(self, kind: str, detail: str, task: str, payload: Mapping[str, str]) -> None:
        self.failures[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < 3:
            examples.append(f"{task} {detail[:300]} payload={dict(payload)!r}"[:2000])


class Harness:
    """A service on a walking engine with the real Qwen3 renderer, run on its own event loop."""

    def __init__(self, tasks: Mapping[str, Task], seed: int = 0):
        from tests.conftest import TASKS_DIR
        from tests.fakes import FAKE_BASE, write_fake_adapter

        self.walker = Walker()
        self.engine = WalkEngine(self.walker, seed)
        self.workdir = Path(tempfile.mkdtemp(prefix="medlora-volume-"))
        adapters = self.workdir / "adapters"
        for task in tasks.values():
            write_fake_adapter(adapters / task.manifest.adapter.path)
        settings = Settings(
            model=FAKE_BASE,
            adapters_dir=adapters,
            tasks_dir=TASKS_DIR,
            batch_dir=self.workdir / "batches",
        )
        self.registry = CollectorRegistry()
        self.service: Service = build_service(
            settings,
            tasks=dict(tasks),
            engine=self.engine,
            renderer=PromptRenderer(self.walker.tokenizer),
            metrics_registry=self.registry,
        )
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.service.start())

    def close(self) -> None:
        self.loop.run_until_complete(self.service.stop())
        self.loop.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def dropped(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for family in self.registry.collect():
            if family.name == "medlora_spans_dropped":
                for s in family.samples:
                    if s.name.endswith("_total"):
                        counts[s.labels["reason"]] += int(s.value)
        return counts

    def run(self, documents: Sequence[tuple[int, str, Mapping[str, str]]]) -> Outcome:
        """Each (index, task name, payload) alone in a request; what it found."""
        outcome = Outcome()
        started, cpu_started = time.perf_counter(), time.process_time()
        tally = self.engine.tally
        before = tally.generations, tally.tokens, tally.long_walks
        tally.longest = 0
        for index, name, payload in documents:
            self.engine.salt = str(index)
            self._one(outcome, self.service.tasks[name], index, payload)
        outcome.documents = len(documents)
        outcome.generations = tally.generations - before[0]
        outcome.tokens = tally.tokens - before[1]
        outcome.long_walks = tally.long_walks - before[2]
        outcome.longest_walk = tally.longest
        outcome.seconds = time.perf_counter() - started
        outcome.cpu_seconds = time.process_time() - cpu_started
        return outcome

    def _one(self, outcome: Outcome, task: Task, index: int, payload: Mapping[str, str]) -> None:
        failures_before = sum(outcome.failures.values())
        self._check_one(outcome, task, index, payload)
        outcome.failed_documents += sum(outcome.failures.values()) > failures_before

    def _check_one(self, outcome: Outcome, task: Task, index: int, payload: Mapping[str, str]) -> None:
        dropped_before = self.dropped()
        body = request_body(task, f"d{index}", payload)
        try:
            response = self.loop.run_until_complete(
                call_json(
                    self.service, ENDPOINTS[task.type], body, request_id=f"volume-{index}", origin="api", priority=0
                )
            )
        except Problem as exc:
            outcome.fail(problem_kind(exc), f"{exc.kind.slug}: {exc.detail}", task.name, payload)
            return
        except Exception as exc:
            where = traceback.format_exception(exc)[-3:]
            outcome.fail(f"crash:{type(exc).__name__}", "".join(where), task.name, payload)
            return
        dropped = self.dropped() - dropped_before
        outcome.dropped.update(dropped)
        if dropped["not_in_source"]:
            # The grammar admits only runs of source pieces: a decoded span that is not one is a hole.
            outcome.fail("ungrounded_span", f"{dropped['not_in_source']} span(s) not in source", task.name, payload)
        items = body[task.kind.items_field]
        for kind, detail in check_response(task, items, response, outcome.returned):
            outcome.fail(kind, detail, task.name, payload)


def problem_kind(exc: Problem) -> str:
    detail = str(exc.detail)
    if "finish_reason='length'" in detail:
        return "no_end_within_max_tokens"
    if "not valid JSON" in detail:
        return "unparsable"
    if "violates the task schema" in detail:
        return "schema_invalid"
    if detail.startswith("walk:"):
        return "grammar_dead_end"
    if "does not fit the model context" in detail:
        return "context_too_small"
    return f"problem:{exc.kind.slug}"


@cache
def _harness(names: tuple[str, ...], seed: int) -> Harness:
    from tests.conftest import shipped_task

    return Harness({name: shipped_task(name) for name in names}, seed)


def run_in_worker(
    names: tuple[str, ...], seed: int, documents: Sequence[tuple[int, str, Mapping[str, str]]]
) -> Outcome:
    """For a process pool: this process's harness (built once) runs the documents."""
    return _harness(names, seed).run(documents)


# -- the guarantees, checked on a response body (in process and from a live server) ---------------


def _probability(value: Any) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


def _mark(text: str, at: int) -> bool:
    return 0 <= at < len(text) and unicodedata.category(text[at]) in ("Mn", "Me", "Mc")


def _splits_a_letter(text: str, at: int) -> bool:
    """Whether offset `at` falls between a character and a combining mark it carries (a mark
    after whitespace or at the start carries nothing; a character with more marks than a piece
    holds may be cut after a piece's worth)."""
    if not (0 < at < len(text) and _mark(text, at)):
        return False
    base = at - 1
    while base >= 0 and _mark(text, base):
        base -= 1
    return base >= 0 and not text[base].isspace() and at - base < _PIECE_MAX_CHARS


def _span_problems(text: str, span: Mapping[str, Any], max_chars: int, returned: Counter[str]) -> list[Failure]:
    start, end, got = span.get("start"), span.get("end"), span.get("text")
    if not (type(start) is int and type(end) is int and 0 <= start < end <= len(text)):
        return [("span_offsets", f"offsets out of range: {span!r} in {len(text)} chars")]
    returned["spans"] += 1
    if got != text[start:end]:
        return [("span_text_mismatch", f"text {got!r} != document[{start}:{end}] {text[start:end]!r}")]
    if got.strip() != got:
        return [("span_not_trimmed", repr(span))]
    # The schema bounds the span the model writes, in the NFC text it reads: a decomposed note's
    # span, in the characters sent, is longer by the marks NFC composed.
    if len(unicodedata.normalize("NFC", got)) > max_chars:
        return [("span_too_long", f"{len(unicodedata.normalize('NFC', got))} > {max_chars} chars (NFC)")]
    if _splits_a_letter(text, start) or _splits_a_letter(text, end):
        return [("span_splits_a_letter_from_its_mark", f"[{start}:{end}] {text[max(start - 2, 0) : end + 2]!a}")]
    return []


def _entity_problems(task: Task, text: str, entities: list[dict[str, Any]], returned: Counter[str]) -> list[Failure]:
    problems: list[Failure] = []
    max_chars = int(task.schema["properties"]["entities"]["items"]["prefixItems"][0]["maxLength"])
    keys = [(e["start"], e["end"], e["label"]) for e in entities]
    if keys != sorted(keys, key=lambda k: (k[0], k[1], k[2])) or len(set(keys)) != len(keys):
        problems.append(("entities_order", "entities not in document order, or repeated"))
    for e in entities:
        problems += _span_problems(text, e, max_chars, returned)
        if e["label"] not in task.label_names:
            problems.append(("entity_label", repr(e["label"])))
        attributes = e.get("attributes", {})
        if set(attributes) != set(task.attribute_names) or not all(type(v) is bool for v in attributes.values()):
            problems.append(("entity_attributes", repr(attributes)))
        if not _probability(e.get("confidence")):
            problems.append(("confidence", f"entity confidence {e.get('confidence')!r}"))
    return problems


def _relation_problems(task: Task, doc: dict[str, Any]) -> list[Failure]:
    problems: list[Failure] = []
    ids = [e.get("id") for e in doc["entities"]]
    if ids != [f"e{i}" for i in range(1, len(ids) + 1)]:
        problems.append(("entity_ids", f"ids {ids[:10]!r}"))
    by_id = {e.get("id"): e for e in doc["entities"]}
    types = {spec.name: spec for spec in task.manifest.relation_types}
    seen: set[tuple[str, str, str]] = set()
    for r in doc["relations"]:
        head, tail, spec = by_id.get(r["head"]), by_id.get(r["tail"]), types.get(r["type"])
        if head is None or tail is None:
            problems.append(("relation_unknown_entity", repr(r)))
        elif spec is None:
            problems.append(("relation_type", repr(r)))
        elif r["head"] == r["tail"]:
            problems.append(("relation_self", repr(r)))
        elif head["label"] not in spec.head or tail["label"] not in spec.tail:
            problems.append(("relation_labels", f"{r!r}: {head['label']} -> {tail['label']}"))
        if (r["type"], r["head"], r["tail"]) in seen:
            problems.append(("relation_duplicate", repr(r)))
        seen.add((r["type"], r["head"], r["tail"]))
        if not _probability(r.get("confidence")):
            problems.append(("confidence", f"relation confidence {r.get('confidence')!r}"))
    return problems


def form_value_ok(spec: FormItemSpec, value: Any) -> bool:
    """Whether a returned value is one the item's kind and bounds admit."""
    options = list(spec.options or [])
    if spec.kind == "choice" and spec.multiple:
        return isinstance(value, list) and bool(value) and value == [o for o in options if o in value]
    if spec.kind == "choice":
        return value in options
    if spec.kind == "boolean":
        return type(value) is bool
    if spec.kind == "integer":
        return type(value) is int and (spec.min or 0) <= value <= (spec.max or 0)
    if spec.kind == "decimal":
        return (
            is_number(value)
            and (spec.min or 0) <= value <= (spec.max or 0)
            and scaled(value, spec.decimals or 0) is not None
        )
    if spec.kind == "date":
        if not (isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)):
            return False
        try:
            year = datetime.date.fromisoformat(value).year
        except ValueError:
            return False
        first, last = spec.years or (1900, 2100)
        return first <= year <= last
    # A text value is a span of the note: its length limit counts the NFC characters the model wrote.
    limit = spec.max_length or TEXT_MAX_CHARS
    return isinstance(value, str) and 0 < len(unicodedata.normalize("NFC", value)) <= limit


def _form_problems(task: Task, text: str, doc: dict[str, Any], returned: Counter[str]) -> list[Failure]:
    problems: list[Failure] = []
    specs = {item.name: item for item in task.manifest.items}
    names = [i.get("name") for i in doc["items"]]
    if names != list(specs):
        return [("form_items", f"items {names!r} are not the form's {list(specs)!r} once each in order")]
    for item in doc["items"]:
        spec = specs[item["name"]]
        evidence_chars = (spec.max_length or TEXT_MAX_CHARS) if spec.kind == "text" else EVIDENCE_MAX_CHARS
        if item["status"] == "unknown":
            if (item["value"], item["evidence"], item["confidence"], item["alternatives"]) != (None, [], None, []):
                problems.append(("form_unknown", repr(item)))
            returned["unknown"] += 1
            continue
        if item["status"] != "filled":
            problems.append(("form_status", repr(item["status"])))
            continue
        returned["filled"] += 1
        for value, evidence, confidence in [
            (item["value"], item["evidence"], item["confidence"]),
            *((a["value"], a["evidence"], a["confidence"]) for a in item["alternatives"]),
        ]:
            if not form_value_ok(spec, value):
                problems.append(("form_value", f"{spec.name} ({spec.kind}): {value!r}"))
            if not evidence:
                problems.append(("form_evidence", f"{spec.name}: no evidence"))
            for span in evidence:
                problems += _span_problems(text, span, evidence_chars, returned)
            if spec.kind == "text" and evidence and value != evidence[0]["text"]:
                problems.append(("form_text_value", f"{spec.name}: {value!r} != {evidence[0]['text']!r}"))
            if not _probability(confidence):
                problems.append(("confidence", f"{spec.name} confidence {confidence!r}"))
        if item["conflict"] != bool(item["alternatives"]):
            problems.append(("form_conflict", repr(item)))
    return problems


def check_response(
    task: Task,
    items: list[dict[str, Any]],
    body: dict[str, Any],
    returned: Counter[str] | None = None,
    served_as: str | None = None,
) -> list[Failure]:
    """Every guarantee the README states for a response to `items` (as sent): (kind, detail) per
    breach. It parses as the type's response model; every span is `document[start:end]`; entities
    and labels are the task's; relations name entities of their document with labels their type
    allows, never an entity and itself; a form has every item once, in order, within bounds.
    `served_as`: the task's name on the server, when it serves the task under another name.
    `returned` counts what was returned (entities, relations, filled items, ...)."""
    returned = returned if returned is not None else Counter()
    try:
        task.kind.response_model.model_validate(body)
    except ValidationError as exc:
        return [("response_model", str(exc)[:500])]
    problems: list[Failure] = []
    if body["task"] != (served_as or task.name):
        problems.append(("response_task", repr(body["task"])))
    out_field = "items" if task.type == "qa" else "documents"
    answered = body[out_field]
    if [d["id"] for d in answered] != [i["id"] for i in items]:
        return [*problems, ("response_ids", "answers are not one per item, in order")]
    for sent, doc in zip(items, answered, strict=True):
        text = sent["context"] if task.type == "qa" else sent["text"]
        if task.type == "ner":
            problems += _entity_problems(task, text, doc["entities"], returned)
            returned["entities"] += len(doc["entities"])
        elif task.type == "relations":
            problems += _entity_problems(task, text, doc["entities"], returned)
            problems += _relation_problems(task, doc)
            returned["entities"] += len(doc["entities"])
            returned["relations"] += len(doc["relations"])
        elif task.type == "qa":
            answer = doc["answer"]
            if answer is not None:
                max_chars = max(int(a.get("maxLength", 0)) for a in task.schema["properties"]["answer"]["anyOf"])
                problems += _span_problems(text, answer, max_chars, returned)
                if not _probability(answer.get("confidence")):
                    problems.append(("confidence", f"answer confidence {answer.get('confidence')!r}"))
                returned["answers"] += 1
            else:
                returned["null_answers"] += 1
        elif task.type == "classification":
            labels = doc["labels"]
            unknown = any(label not in task.label_names for label in labels)
            # A blank document is answered without the model: no label (or, before that rule, one).
            bad = (not labels and text.strip()) or unknown or len(set(labels)) != len(labels)
            if bad or (not task.manifest.multi_label and len(labels) > 1):
                problems.append(("classification_labels", repr(labels)))
            if set(doc["scores"]) != set(labels) or not all(_probability(s) for s in doc["scores"].values()):
                problems.append(("confidence", f"scores {doc['scores']!r} for labels {labels!r}"))
            returned["labels"] += len(labels)
        elif task.type == "form":
            problems += _form_problems(task, text, doc, returned)
    return problems
