"""Confidence: token log-probabilities mapped onto the characters of an answer, and the
confidence every entity, answer and label gets from them, through the service."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from app.tasks.confidence import TokenConfidences, locate
from app.tasks.types.base import Answer
from tests.fakes import confidences_at, ner_output, part_ranges, sample
from tests.support.qwen3 import qwen3_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return qwen3_tokenizer()


def test_each_token_maps_to_the_characters_it_wrote_even_when_it_splits_one(tokenizer: Any) -> None:
    text = '{"a":"🙂 è"}'
    # The emoji written one byte a token (a path the grammar allows), then the rest as Qwen3 has it.
    byte_token = {ch: tokenizer.convert_tokens_to_ids(ch) for ch in tokenizer.convert_ids_to_tokens(list(range(256)))}
    from app.tasks.confidence import _byte_decoder

    by_byte = {b: byte_token[ch] for ch, b in _byte_decoder().items() if ch in byte_token}
    ids = [
        *tokenizer.encode('{"a":"', add_special_tokens=False),
        *(by_byte[b] for b in "🙂".encode()),
        *tokenizer.encode(' è"}', add_special_tokens=False),
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]
    logprobs = [math.log(0.5) if i == len(ids) - 3 else 0.0 for i in range(len(ids))]
    confidences = TokenConfidences.build(tokenizer, text, ids, logprobs)
    assert confidences is not None
    emoji = text.index("🙂")
    # The four byte tokens all belong to the emoji's one character.
    assert [s for s in confidences.starts].count(emoji) >= 4
    assert confidences.of(emoji, emoji + 1) == 1.0
    node = locate(text).members["a"]
    assert text[node.start : node.end] == '"🙂 è"'
    assert confidences.of(node.start, node.end) == pytest.approx(0.5)  # the 0.5 token wrote ` è` or `"}`


def test_tokens_that_do_not_spell_the_text_give_no_confidence_rather_than_a_wrong_one(tokenizer: Any) -> None:
    ids = tokenizer.encode('{"a":"x"}', add_special_tokens=False)
    assert TokenConfidences.build(tokenizer, '{"a":"y"}', ids, [0.0] * len(ids)) is None
    assert TokenConfidences.build(tokenizer, '{"a":"x"}', ids, None) is None
    assert TokenConfidences.build(tokenizer, '{"a":"x"}', ids, [0.0]) is None


def test_a_part_gets_the_probability_of_the_tokens_that_wrote_it(tokenizer: Any) -> None:
    text = '{"entities":[["febbre","SYMPTOM"],["tosse","SYMPTOM","negated"]]}'
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = [tokenizer.decode([i]) for i in ids]
    # A probability of 0.8 on the token that starts "tosse", certainty everywhere else.
    starts = [sum(len(p) for p in pieces[:k]) for k in range(len(pieces))]
    tosse = text.index("tosse")
    logprobs = [math.log(0.8) if s <= tosse < s + len(p) else 0.0 for s, p in zip(starts, pieces, strict=True)]
    answer = Answer(json.loads(text), text, TokenConfidences.build(tokenizer, text, ids, logprobs))
    assert answer.confidence("entities", 0) == 1.0
    assert answer.confidence("entities", 1) == 0.8  # joint: the one uncertain token
    second = locate(text).members["entities"].items[1]
    scores = answer.confidences
    assert scores is not None
    written = sum(1 for s, e in zip(scores.starts, scores.ends, strict=True) if s < second.end and second.start < e)
    # Per token: the geometric mean of the tokens that wrote it, one of them at 0.8.
    assert answer.confidence("entities", 1, per_token=True) == round(0.8 ** (1 / written), 4)
    assert Answer(json.loads(text), text).confidence("entities", 0) is None  # no log-probabilities


def test_entities_carry_confidence_and_min_confidence_drops_the_rest_counted(client_for: Any) -> None:
    answer = ner_output(("febbre", "SYMPTOM"), ("tosse", "SYMPTOM", "negated"))
    logprob = confidences_at(part_ranges("entities"), {answer: [0.9, 0.4]}, per_token=True)
    client, _ = client_for(lambda r: answer, logprob=logprob)
    body = {"task": "ner-it-clinical", "documents": [{"id": "d", "text": "febbre e tosse"}]}
    entities = client.post("/v1/ner", json=body).json()["documents"][0]["entities"]
    assert [(e["text"], e["confidence"]) for e in entities] == [("febbre", 0.9), ("tosse", 0.4)]
    kept = client.post("/v1/ner", json={**body, "min_confidence": 0.5}).json()["documents"][0]["entities"]
    assert [e["text"] for e in kept] == ["febbre"]
    dropped = sample(client.get("/metrics").text, "medlora_spans_dropped_total", reason="low_confidence")
    assert dropped == 1.0
    bad = client.post("/v1/ner", json={**body, "min_confidence": 1.5})
    assert bad.status_code == 422 and bad.json()["type"] == "urn:medlora:problem:invalid-request"


def test_min_confidence_says_whether_it_could_be_applied(client_for: Any) -> None:
    answer = ner_output(("febbre", "SYMPTOM"), ("tosse", "SYMPTOM"))
    body = {"task": "ner-it-clinical", "documents": [{"id": "d", "text": "febbre e tosse"}], "min_confidence": 0.5}
    logprob = confidences_at(part_ranges("entities"), {answer: [0.9, 0.4]}, per_token=True)
    scored, _ = client_for(lambda r: answer, logprob=logprob)
    response = scored.post("/v1/ner", json=body).json()
    assert response["min_confidence_applied"] is True
    assert [e["text"] for e in response["documents"][0]["entities"]] == ["febbre"]
    # An engine that returns no log-probabilities: nothing has a confidence, nothing is left out,
    # and the answer says the threshold was not applied rather than implying it was.
    unscored, _ = client_for(lambda r: answer)
    response = unscored.post("/v1/ner", json=body).json()
    assert response["min_confidence_applied"] is False
    assert [e["text"] for e in response["documents"][0]["entities"]] == ["febbre", "tosse"]
    assert unscored.post("/v1/ner", json={**body, "min_confidence": None}).json()["min_confidence_applied"] is None


def test_an_entity_found_in_two_overlapping_chunks_keeps_its_higher_confidence() -> None:
    from app.tasks.chunking import merge_spans
    from app.tasks.grounding import Span

    first = [Span(10, 15, "tosse", "SYMPTOM", {}, 0.3), Span(30, 36, "febbre", "SYMPTOM", {}, 0.9)]
    second = [Span(10, 15, "tosse", "SYMPTOM", {}, 0.7), Span(50, 55, "ferro", "DRUG", {}, 0.2)]
    merged = merge_spans([first, second])
    assert [(s.text, s.confidence) for s in merged] == [("tosse", 0.7), ("febbre", 0.9), ("ferro", 0.2)]


def test_qa_answers_and_classification_labels_carry_confidence(client_for: Any) -> None:
    qa_answer, label = json.dumps({"answer": "furosemide"}), json.dumps({"labels": ["LAB_REPORT"]})

    def respond(request: Any) -> str:
        return qa_answer if "Question:" in bytes(request.prompt_token_ids).decode() else label

    qa_logprob = confidences_at(part_ranges("answer"), {qa_answer: [0.75]}, per_token=False)  # joint
    label_logprob = confidences_at(part_ranges("labels"), {label: [0.6]}, per_token=True)  # per token
    client, _ = client_for(respond, logprob=lambda a, i: (qa_logprob if a == qa_answer else label_logprob)(a, i))
    item = {"id": "q", "context": "Dimesso con furosemide 25 mg.", "question": "Quale diuretico?"}
    answer = client.post("/v1/qa", json={"task": "qa-it-clinical", "items": [item]}).json()["items"][0]["answer"]
    assert answer == {"text": "furosemide", "start": 12, "end": 22, "confidence": 0.75}
    below = client.post("/v1/qa", json={"task": "qa-it-clinical", "items": [item], "min_confidence": 0.8})
    assert below.json()["items"][0]["answer"] is None
    doc = {"task": "classify-it-note-type", "documents": [{"id": "d", "text": "Emocromo nella norma."}]}
    out = client.post("/v1/classify", json=doc).json()["documents"][0]
    assert out["labels"] == ["LAB_REPORT"] and out["scores"] == {"LAB_REPORT": 0.6}


def test_ids_the_tokenizer_does_not_have_give_no_confidence() -> None:
    from tests.fakes import FakeTokenizer

    assert TokenConfidences.build(FakeTokenizer(), "x", [151_645], [0.0]) is None
