"""A note that is not NFC is read by the model in NFC (its tokenizer normalizes), so the prompt,
the grammar and grounding use the NFC text, and every span goes back to the characters sent."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.tasks.grounding import Span
from app.tasks.normalization import NfcText
from app.tasks.types.base import Tally
from app.tasks.types.ner import NerResult
from tests.conftest import shipped_task
from tests.fakes import last_input, ner_output

NFD_NOTE = unicodedata.normalize("NFD", "Dispnea a riposo, ortopnea; città: Forlì. Caffè.")

# Letters, combining marks, Hangul jamo (which compose with each other), singletons NFC changes
# (ANGSTROM SIGN, OHM SIGN), CJK compatibility ideographs, and ASCII around them.
awkward = st.text(
    st.sampled_from(
        [
            *"aeiou AEIOU.,;\u2029\n",
            *"\u0300\u0301\u0308\u0323\u034f\u20dd\xad",
            *"\u1100\u1161\u11a8",
            *"\u212b\u2126\uf900\u00e8\U0001f642",
        ]
    ),
    max_size=60,
)


@given(awkward)
@settings(max_examples=400)
def test_the_nfc_text_is_what_the_tokenizer_would_make_of_the_note(text: str) -> None:
    nfc = NfcText.of(text)
    if nfc is None:
        assert unicodedata.is_normalized("NFC", text)
        return
    assert nfc.text == unicodedata.normalize("NFC", text)
    # Every piece maps whole: original and NFC bounds walk the two texts in step, and only what
    # normalization changes is mapped as a block (everything else one character to one).
    for k in range(len(nfc.original_bounds) - 1):
        piece = text[nfc.original_bounds[k] : nfc.original_bounds[k + 1]]
        normal = nfc.text[nfc.nfc_bounds[k] : nfc.nfc_bounds[k + 1]]
        assert normal == unicodedata.normalize("NFC", piece)
        assert len(piece) == 1 or normal != piece


def test_a_span_of_the_nfc_text_maps_back_to_the_characters_sent() -> None:
    nfc = NfcText.of(NFD_NOTE)
    assert nfc is not None and nfc.text == unicodedata.normalize("NFC", NFD_NOTE)
    start = nfc.text.index("città")
    span = nfc.remap(Span(start, start + len("città"), "città", "X"))
    assert NFD_NOTE[span.start : span.end] == span.text == unicodedata.normalize("NFD", "città")
    assert NfcText.of("già NFC") is None


def test_a_span_of_unchanged_characters_is_not_widened_over_their_neighbours() -> None:
    # A combining mark after a paragraph separator composes with nothing and NFC leaves both
    # alone, but they share a segment: a span of the mark alone stays the mark alone, not a span
    # that starts with whitespace (found at volume on real vLLM).
    note = "e\u0301 \u2029\u0301x"
    nfc = NfcText.of(note)
    assert nfc is not None and nfc.text == "\u00e9 \u2029\u0301x"
    span = nfc.remap(Span(3, 5, "\u0301x", "X"))
    assert (span.start, span.end, span.text) == (4, 6, "\u0301x")
    assert nfc.remap(Span(0, 1, "\u00e9", "X")).text == "e\u0301"


def test_a_span_cut_inside_marks_nfc_reordered_keeps_only_what_maps_exactly() -> None:
    # A letter with more marks than a piece holds (32) may be cut inside them. NFC put the marks
    # in canonical order (each dot below before the acutes), so no run of the characters sent
    # is the part before the cut: the span gives up that letter and its marks rather than grow
    # past its length limit or over a neighbour (found at volume: 108 characters for 80).
    note = "ab x" + "\u0301\u0323" * 20 + " y"
    nfc = NfcText.of(note)
    assert nfc is not None
    cut = Span(0, 37, nfc.text[:37], "SYMPTOM", confidence=0.4)  # "ab x" and 33 of x's 40 marks
    assert nfc.remap(cut).text == "ab"
    inside = Span(4, 37, nfc.text[4:37], "SYMPTOM", confidence=0.4)  # the marks alone
    assert nfc.remap(inside).start == nfc.remap(inside).end  # nothing maps exactly
    whole = Span(0, 44, nfc.text[:44], "SYMPTOM", confidence=0.7)
    assert nfc.remap(whole).text == note[:44]
    task = shipped_task("ner-it-clinical")
    tally = Tally(returned=3)
    result = task.kind.to_original(task, NerResult([cut, inside, whole]), nfc, tally)
    assert [(e.start, e.end, e.text) for e in result.entities] == [(0, 2, "ab"), (0, 44, note[:44])]
    assert tally.returned == 2 and tally.dropped["normalization"] == 1


def test_a_decomposed_note_is_read_composed_and_answered_with_its_own_characters(client_for: Any) -> None:
    seen: list[str] = []

    def respond(request: Any) -> str:
        seen.append(last_input(request))
        return ner_output(("città", "SYMPTOM"), ("Caffè", "DRUG"))  # what a model writes: NFC text

    client, _ = client_for(respond)
    body = {"task": "ner-it-clinical", "documents": [{"id": "d", "text": NFD_NOTE}]}
    r = client.post("/v1/ner", json=body)
    assert r.status_code == 200, r.text
    assert seen == [unicodedata.normalize("NFC", NFD_NOTE)]  # the prompt, and the grammar's source
    entities = r.json()["documents"][0]["entities"]
    assert [e["label"] for e in entities] == ["SYMPTOM", "DRUG"]
    for entity in entities:
        assert NFD_NOTE[entity["start"] : entity["end"]] == entity["text"]  # the characters sent
        assert not unicodedata.is_normalized("NFC", entity["text"])


def test_a_form_text_value_is_the_characters_sent(client_for: Any) -> None:
    note = unicodedata.normalize("NFD", "Diagnosi: polmonite basale destra, già nota.")

    def respond(request: Any) -> str:
        prompt = bytes(request.prompt_token_ids).decode()
        item = "working_diagnosis"
        span = "polmonite basale destra, già nota"
        return json.dumps({item: unicodedata.normalize("NFC", span)} if f"- {item} (" in prompt else {})

    client, _ = client_for(respond)
    r = client.post("/v1/forms", json={"task": "crf-it-dyspnea", "documents": [{"id": "d", "text": note}]})
    assert r.status_code == 200, r.text
    (item,) = [i for i in r.json()["documents"][0]["items"] if i["name"] == "working_diagnosis"]
    (evidence,) = item["evidence"]
    assert note[evidence["start"] : evidence["end"]] == evidence["text"] == item["value"]
