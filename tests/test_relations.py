"""The relations task type through the service (fake engine): entities with ids and exact
offsets, relations by id, what is dropped and counted, merging across chunks, confidence."""

from __future__ import annotations

import json
import math
from typing import Any

from app.engine.base import GenerationRequest
from app.tasks.confidence import locate
from tests.fakes import confidences_at, last_input, part_ranges, sample
from tests.support.chunk_edges import first_chunk_ends_after

TASK = "re-it-medication"
NOTE = "Terapia: amoxicillina 1 g per os ogni 8 ore. Sospeso warfarin."


def answer(entities: list[list[str]], relations: list[list[Any]]) -> str:
    return json.dumps({"entities": entities, "relations": relations}, ensure_ascii=False)


def post(client: Any, text: str, **extra: Any) -> Any:
    return client.post("/v1/relations", json={"task": TASK, "documents": [{"id": "d", "text": text}], **extra})


def dropped(client: Any, reason: str) -> float | None:
    return sample(client.get("/metrics").text, "medlora_spans_dropped_total", task=TASK, reason=reason)


def test_relations_name_grounded_entities_of_the_same_document_by_id(client_for: Any) -> None:
    written = answer(
        [["amoxicillina", "DRUG"], ["1 g", "DOSAGE"], ["per os", "ROUTE"], ["ogni 8 ore", "FREQUENCY"]],
        [["dosage", 0, 1], ["route", 0, 2], ["frequency", 0, 3]],
    )
    client, _ = client_for(lambda r: written)
    r = post(client, NOTE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["task"], body["offset_unit"]) == (TASK, "unicode_code_point")
    doc = body["documents"][0]
    entities = {e["id"]: e for e in doc["entities"]}
    assert [e["id"] for e in doc["entities"]] == ["e1", "e2", "e3", "e4"]  # document order
    for e in doc["entities"]:
        assert NOTE[e["start"] : e["end"]] == e["text"]
    named = {(rel["type"], entities[rel["head"]]["text"], entities[rel["tail"]]["text"]) for rel in doc["relations"]}
    assert named == {("dosage", "amoxicillina", "1 g"), ("route", "amoxicillina", "per os"),
                     ("frequency", "amoxicillina", "ogni 8 ore")}  # fmt: skip


def test_a_relation_that_breaks_the_contract_is_dropped_and_counted_never_returned(client_for: Any) -> None:
    written = answer(
        [["amoxicillina", "DRUG"], ["1 g", "DOSAGE"], ["paracetamolo", "DRUG"], ["per os", "ROUTE"]],
        [
            ["dosage", 0, 1],  # kept
            ["dosage", 0, 1],  # the same again
            ["route", 0, 7],  # no entity at position 7
            ["dosage", 2, 1],  # head not grounded (paracetamolo is not in the note)
            ["route", 1, 3],  # a DOSAGE cannot head a route
            ["dosage", 0, 0],  # an entity related to itself
        ],
    )
    client, _ = client_for(lambda r: written)
    doc = post(client, NOTE).json()["documents"][0]
    assert [e["text"] for e in doc["entities"]] == ["amoxicillina", "1 g", "per os"]
    assert [(rel["type"], rel["head"], rel["tail"]) for rel in doc["relations"]] == [("dosage", "e1", "e2")]
    for reason in ("duplicate", "relation_argument_missing", "relation_argument_dropped", "relation_labels",
                   "relation_self"):  # fmt: skip
        assert dropped(client, reason) == 1.0, reason


def test_an_empty_note_has_no_entities_or_relations_without_asking_the_model(client_for: Any) -> None:
    client, engine = client_for(lambda r: "not json")
    doc = post(client, "   ").json()["documents"][0]
    assert (doc["entities"], doc["relations"]) == ([], [])
    assert engine.calls == []


def test_relations_found_in_overlapping_chunks_are_merged_with_their_entities(client_for: Any) -> None:
    filler = "Decorso regolare, paziente vigile e collaborante, parametri stabili. "
    prescription = "Prescritto furosemide 25 mg la mattina. "
    text = filler * 20 + prescription + filler * 20
    at = text.index(prescription)

    def respond(request: GenerationRequest) -> str:
        chunk = last_input(request)
        if "furosemide 25 mg" not in chunk:
            return answer([], [])
        return answer([["furosemide", "DRUG"], ["25 mg", "DOSAGE"], ["la mattina", "FREQUENCY"]],
                      [["dosage", 0, 1], ["frequency", 0, 2]])  # fmt: skip

    client, engine = client_for(respond)
    doc = post(client, text).json()["documents"][0]
    seen_in = sum("furosemide 25 mg" in last_input(call) for call in engine.calls)
    assert seen_in >= 2  # the prescription sits in the overlap of two chunks
    assert [(e["text"], e["start"]) for e in doc["entities"]] == [
        ("furosemide", at + 11),
        ("25 mg", at + 22),
        ("la mattina", at + 28),
    ]
    assert [(rel["type"], rel["head"], rel["tail"]) for rel in doc["relations"]] == [
        ("dosage", "e1", "e2"),
        ("frequency", "e1", "e3"),
    ]


def _relation_logprob(confidences: dict[int, float], *, spread: bool = False) -> Any:
    """The k-th relation triple's first byte (one token a byte here) at log(confidences[k]),
    or with `spread` every byte of it, all else certain."""

    def logprob(written: str, offset: int) -> float:
        node = locate(written).members.get("relations")
        for k, item in enumerate(node.items if node else []):
            inside = item.start <= offset < item.end if spread else offset == item.start
            if inside and k in confidences:
                return math.log(confidences[k])
        return 0.0

    return logprob


def test_relations_carry_confidence_and_min_confidence_drops_the_weak_ones(client_for: Any) -> None:
    written = answer(
        [["amoxicillina", "DRUG"], ["1 g", "DOSAGE"], ["per os", "ROUTE"]], [["dosage", 0, 1], ["route", 0, 2]]
    )
    client, _ = client_for(lambda r: written, logprob=_relation_logprob({0: 0.9, 1: 0.3}))
    relations = post(client, NOTE).json()["documents"][0]["relations"]
    assert [(rel["type"], rel["confidence"]) for rel in relations] == [("dosage", 0.9), ("route", 0.3)]
    kept = post(client, NOTE, min_confidence=0.5).json()["documents"][0]["relations"]
    assert [rel["type"] for rel in kept] == ["dosage"]
    assert dropped(client, "low_confidence") == 1.0
    # The joint probability of the triple's tokens: a doubt on every token compounds.
    client, _ = client_for(lambda r: written, logprob=_relation_logprob({0: 0.9}, spread=True))
    triple = len(json.dumps(["dosage", 0, 1]))  # its bytes, one token each here
    relations = post(client, NOTE).json()["documents"][0]["relations"]
    assert relations[0]["confidence"] == round(0.9**triple, 4)


def test_a_task_of_another_type_on_the_relations_endpoint_is_400_wrong_task_type(client_for: Any) -> None:
    client, _ = client_for(lambda r: "")
    for task, endpoint in (("ner-it-clinical", "relations"), ("crf-it-dyspnea", "relations"), (TASK, "ner")):
        r = client.post(f"/v1/{endpoint}", json={"task": task, "documents": [{"id": "d", "text": "x"}]})
        assert r.status_code == 400, (task, endpoint)
        assert r.json()["type"] == "urn:medlora:problem:wrong-task-type"
        assert r.headers["content-type"].startswith("application/problem+json")


def test_the_task_list_shows_the_relation_types_with_their_argument_labels(client_for: Any) -> None:
    client, _ = client_for(lambda r: "")
    tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    types = {t["name"]: (t["head"], t["tail"]) for t in tasks[TASK]["relation_types"]}
    assert types == {
        "dosage": (["DRUG"], ["DOSAGE"]),
        "frequency": (["DRUG"], ["FREQUENCY"]),
        "route": (["DRUG"], ["ROUTE"]),
        "duration": (["DRUG"], ["DURATION"]),
    }
    assert tasks["re-en-medication"]["type"] == "relations"


def _entity_logprob(written: str, confidences: list[float]) -> Any:
    """Every byte of the k-th entity at log(confidences[k]) (its per-token confidence), all else certain."""
    return confidences_at(part_ranges("entities"), {written: confidences}, per_token=True)


COMBINATION = "Terapia: amoxicillina/acido clavulanico 1 g per os ogni 12 ore."


def test_a_relation_of_a_nested_entity_under_min_confidence_is_dropped_and_counted_not_moved(
    client_for: Any,
) -> None:
    written = answer(
        [["amoxicillina/acido clavulanico", "DRUG"], ["amoxicillina", "DRUG"], ["1 g", "DOSAGE"]],
        [["dosage", 1, 2]],  # the dose given for the nested drug only
    )
    client, _ = client_for(lambda r: written, logprob=_entity_logprob(written, [0.9, 0.3, 0.9]))
    doc = post(client, COMBINATION, min_confidence=0.5).json()["documents"][0]
    assert [e["text"] for e in doc["entities"]] == ["amoxicillina/acido clavulanico", "1 g"]
    assert doc["relations"] == []  # not handed to the combination the nested drug sits in
    assert dropped(client, "relation_argument_dropped") == 1.0
    assert dropped(client, "low_confidence") == 1.0


def test_a_nested_entity_found_inside_the_overlap_keeps_its_own_relations(client_for: Any) -> None:
    filler = "Decorso regolare, paziente vigile e collaborante, parametri stabili. "
    text = filler * 20 + COMBINATION + " " + filler * 20
    at = text.index("amoxicillina")

    def respond(request: GenerationRequest) -> str:
        if "amoxicillina/acido clavulanico 1 g" not in last_input(request):
            return answer([], [])
        return answer(
            [["amoxicillina/acido clavulanico", "DRUG"], ["amoxicillina", "DRUG"], ["1 g", "DOSAGE"]],
            [["dosage", 1, 2]],
        )

    client, engine = client_for(respond)
    doc = post(client, text).json()["documents"][0]
    assert sum("amoxicillina/acido" in last_input(call) for call in engine.calls) >= 2  # in the overlap
    entities = {e["id"]: (e["text"], e["start"]) for e in doc["entities"]}
    assert sorted(entities.values()) == [("1 g", at + 31), ("amoxicillina", at), ("amoxicillina/acido clavulanico", at)]
    named = [(r["type"], entities[r["head"]][0], entities[r["tail"]][0]) for r in doc["relations"]]
    assert named == [("dosage", "amoxicillina", "1 g")]


def test_a_copy_cut_off_at_a_chunk_edge_hands_its_relations_to_the_whole_entity(client_for: Any) -> None:
    text = first_chunk_ends_after("Prescritto 100 mg di acido ", "acetilsalicilico al giorno ", 1500, 200)
    at = text.index("acido acetilsalicilico")

    def respond(request: GenerationRequest) -> str:
        chunk = last_input(request)
        if "acido acetilsalicilico" in chunk:  # the whole drug, no relation seen here
            return answer([["100 mg", "DOSAGE"], ["acido acetilsalicilico", "DRUG"]], [])
        if chunk.endswith("di acido "):  # the drug's name cut by the chunk's edge
            return answer([["100 mg", "DOSAGE"], ["acido", "DRUG"]], [["dosage", 1, 0]])
        return answer([], [])

    client, engine = client_for(respond)
    doc = post(client, text).json()["documents"][0]
    assert any(last_input(call).endswith("di acido ") for call in engine.calls)
    entities = {e["id"]: (e["text"], e["start"]) for e in doc["entities"]}
    assert sorted(entities.values()) == [("100 mg", at - 10), ("acido acetilsalicilico", at)]
    named = [(r["type"], entities[r["head"]][0], entities[r["tail"]][0]) for r in doc["relations"]]
    assert named == [("dosage", "acido acetilsalicilico", "100 mg")]


def test_a_relation_whose_head_and_tail_merge_into_one_entity_is_dropped_and_counted() -> None:
    from app.tasks.chunking import Chunk
    from app.tasks.grounding import Span
    from app.tasks.types.base import Tally, TaskInput
    from app.tasks.types.relations import Relation, RelationsResult, RelationsType
    from tests.conftest import shipped_task

    text = "x alfa beta gamma delta y"
    whole = Span(2, 23, "alfa beta gamma delta", "DRUG")
    # The middle chunk sees the entity's middle: "beta" at its start and "gamma" at its end,
    # each a copy cut off from the whole entity (found whole by the chunk that holds it).
    start_cut, end_cut = Span(7, 11, "beta", "DRUG"), Span(12, 17, "gamma", "DRUG")
    parts = [
        RelationsResult([Span(2, 11, "alfa beta", "DRUG")], [], chunk=Chunk(0, text[:12])),
        RelationsResult([whole], [], chunk=Chunk(0, text)),
        RelationsResult([start_cut, end_cut], [Relation("dosage", start_cut, end_cut)], chunk=Chunk(7, text[7:18])),
        RelationsResult([Span(12, 23, "gamma delta", "DRUG")], [], chunk=Chunk(12, text[12:])),
    ]
    tally = Tally()
    item = TaskInput("d", {"text": text}, "text")
    merged = RelationsType().merge(shipped_task(TASK), item, parts, tally)
    assert merged.entities == [whole]
    assert merged.relations == []
    assert tally.dropped["relation_self"] == 1
