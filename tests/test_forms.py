"""The form task type through the service (fake engine): every item once, values of every
kind with grounded evidence, item groups, merging across chunks (filled beats unknown,
conflicts resolved and flagged), confidence, and a 140-item generated form."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.engine.base import GenerationRequest
from app.tasks.confidence import locate
from app.tasks.manifests import ManifestError, load_task, load_tasks
from tests.conftest import SCHEMAS_DIR, TASKS_DIR, shipped_task
from tests.fakes import last_input, prompt_of, sample, write_fake_adapter
from tests.support.chunk_edges import first_chunk_ends_after
from tests.support.forms import big_form_items, write_big_form

TASK = "crf-it-dyspnea"
NOTE = (
    "Accesso del 12/03/2024. Uomo di 74 anni con dispnea ingravescente da 4 giorni. "
    "SpO2 88% in aria ambiente, TC 38,2 °C. Rx torace: congestione polmonare e versamento pleurico. "
    "Diagnosi: scompenso cardiaco acuto."
)


def asked_items(request: GenerationRequest) -> list[str]:
    """The items a generation's system prompt lists (its item group)."""
    system = prompt_of(request).split("<|user|>", 1)[0]
    return re.findall(r"^- ([a-z][a-z0-9_]*) \(", system, flags=re.MULTILINE)


def answering(values: dict[str, Any]) -> Any:
    """A responder that writes, for each generation, the given items of its group, in the group's order."""

    def respond(request: GenerationRequest) -> str:
        chunk = last_input(request)
        out = {}
        for name in asked_items(request):
            written = values.get(name)
            evidence = written if isinstance(written, str) else written[0] if written else None
            if evidence is not None and evidence in chunk:
                out[name] = written
        return json.dumps(out, ensure_ascii=False)

    return respond


def post(client: Any, text: str, **extra: Any) -> Any:
    return client.post("/v1/forms", json={"task": TASK, "documents": [{"id": "d", "text": text}], **extra})


def items_of(response: Any) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text
    return {item["name"]: item for item in response.json()["documents"][0]["items"]}


VALUES = {
    "visit_date": ["12/03/2024", "2024-03-12"],
    "age": ["74 anni", 74],
    "sex": ["Uomo", "M"],
    "dyspnea_onset": ["ingravescente", "graduale"],
    "dyspnea_days": ["da 4 giorni", 4],
    "spo2": ["SpO2 88%", 88],
    "temperature": ["TC 38,2 °C", 38.2],
    "chest_xray": ["congestione polmonare e versamento pleurico", "congestione polmonare", "versamento pleurico"],
    "working_diagnosis": "scompenso cardiaco acuto",
}


def test_every_item_is_answered_once_in_declared_order_filled_or_unknown(client_for: Any) -> None:
    client, engine = client_for(answering(VALUES))
    r = post(client, NOTE)
    body = r.json()
    assert (body["task"], body["offset_unit"]) == (TASK, "unicode_code_point")
    items = body["documents"][0]["items"]
    assert [i["name"] for i in items] == [spec.name for spec in shipped_task(TASK).manifest.items]
    assert len(items) == 28
    # One generation per item group: the dyspnea form has two.
    groups = [asked_items(call) for call in engine.calls]
    assert len(groups) == 2 and sorted(name for group in groups for name in group) == sorted(i["name"] for i in items)
    for item in items:
        if item["name"] in VALUES:
            assert item["status"] == "filled", item
            for span in item["evidence"]:
                assert NOTE[span["start"] : span["end"]] == span["text"]
        else:
            assert (item["status"], item["value"], item["evidence"]) == ("unknown", None, []), item


def test_values_of_every_kind_come_back_typed_with_their_evidence(client_for: Any) -> None:
    client, _ = client_for(answering(VALUES))
    items = items_of(post(client, NOTE))
    assert items["visit_date"]["value"] == "2024-03-12"  # normalised from the note's 12/03/2024
    assert items["visit_date"]["evidence"][0]["text"] == "12/03/2024"
    assert items["age"]["value"] == 74 and items["temperature"]["value"] == 38.2
    assert items["sex"]["value"] == "M" and items["dyspnea_onset"]["value"] == "graduale"
    assert items["chest_xray"]["value"] == ["congestione polmonare", "versamento pleurico"]
    diagnosis = items["working_diagnosis"]
    assert diagnosis["value"] == "scompenso cardiaco acuto" == diagnosis["evidence"][0]["text"]
    start = NOTE.index("scompenso cardiaco acuto")
    assert (diagnosis["evidence"][0]["start"], diagnosis["evidence"][0]["end"]) == (start, start + 24)


def test_an_item_whose_evidence_is_not_in_the_note_stays_unknown_and_is_counted(client_for: Any) -> None:
    def respond(request: GenerationRequest) -> str:
        return json.dumps({"spo2": ["SpO2 91%", 91]} if "spo2" in asked_items(request) else {})

    client, _ = client_for(respond)
    items = items_of(post(client, NOTE))
    assert (items["spo2"]["status"], items["spo2"]["value"]) == ("unknown", None)
    metrics = client.get("/metrics").text
    assert sample(metrics, "medlora_spans_dropped_total", task=TASK, reason="not_in_source") == 1.0


def test_a_blank_note_is_every_item_unknown_without_asking_the_model(client_for: Any) -> None:
    client, engine = client_for(lambda r: "not json")
    items = items_of(post(client, " \n "))
    assert len(items) == 28 and {i["status"] for i in items.values()} == {"unknown"}
    assert engine.calls == []


def _item_logprob(confidences: dict[tuple[str, str], float]) -> Any:
    """The first byte of item `name`'s key (one token a byte here) at log(p) where its evidence
    is `ev`: the item's joint probability is then p. All else certain."""

    def logprob(written: str, offset: int) -> float:
        members = locate(written).members
        for name, node in members.items():
            evidence = json.loads(written)[name]
            evidence = evidence if isinstance(evidence, str) else evidence[0]
            p = confidences.get((name, evidence))
            if p is not None and offset == node.key_start:
                return math.log(p)
        return 0.0

    return logprob


FILLER = "Paziente vigile, orientato, collaborante; decorso senza eventi di rilievo. "


def test_across_chunks_a_filled_value_beats_unknown_and_conflicts_keep_the_most_confident_flagged(
    client_for: Any,
) -> None:
    first, second = "SpO2 86% in aria ambiente. ", "In seguito SpO2 93% in O2. "
    text = first + "Uomo di 74 anni. " + FILLER * 30 + second + FILLER * 10
    values = {"spo2": None, "age": ["74 anni", 74]}

    def respond(request: GenerationRequest) -> str:
        chunk, out = last_input(request), {}
        for name in asked_items(request):
            if name == "age" and "74 anni" in chunk:
                out["age"] = values["age"]
            if name == "spo2":
                found = [w for w in (["SpO2 86%", 86], ["SpO2 93%", 93]) if w[0] in chunk]
                if found:
                    out["spo2"] = found[0]
        return json.dumps(out)

    logprob = _item_logprob({("spo2", "SpO2 86%"): 0.6, ("spo2", "SpO2 93%"): 0.8, ("age", "74 anni"): 0.9})
    client, engine = client_for(respond, logprob=logprob)
    assert len(text) > 3000  # several chunks
    items = items_of(post(client, text))
    # Only the first chunk states the age: the others' unknown does not erase it.
    assert (items["age"]["value"], items["age"]["confidence"], items["age"]["conflict"]) == (74, 0.9, False)
    spo2 = items["spo2"]
    assert (spo2["value"], spo2["confidence"], spo2["conflict"]) == (93, 0.8, True)
    assert spo2["evidence"][0]["start"] == text.index("SpO2 93%")
    assert [(a["value"], a["confidence"], a["evidence"][0]["text"]) for a in spo2["alternatives"]] == [
        (86, 0.6, "SpO2 86%")
    ]
    assert len(engine.calls) >= 4  # two groups a chunk


def test_the_same_value_in_two_chunks_unites_its_evidence_without_a_conflict(client_for: Any) -> None:
    text = "Febbre 38,5 °C all'arrivo. " + FILLER * 30 + "Ancora febbre 38,5 °C la sera. "
    client, _ = client_for(answering({"fever": ["ebbre 38,5 °C", True], "temperature": ["38,5 °C", 38.5]}))
    items = items_of(post(client, text))
    temperature = items["temperature"]
    assert temperature["value"] == 38.5 and not temperature["conflict"] and temperature["alternatives"] == []
    starts = [m.start() for m in re.finditer("38,5 °C", text)]
    assert [e["start"] for e in temperature["evidence"]] == starts
    # "ebbre" starts inside a word: not a span the grammar can write, so never grounded.
    assert items["fever"]["status"] == "unknown"


def test_filled_items_carry_confidence_and_min_confidence_makes_the_weak_ones_unknown(client_for: Any) -> None:
    logprob = _item_logprob({("age", "74 anni"): 0.95, ("spo2", "SpO2 88%"): 0.35})
    client, _ = client_for(answering(VALUES), logprob=logprob)
    items = items_of(post(client, NOTE))
    assert (items["age"]["confidence"], items["spo2"]["confidence"]) == (0.95, 0.35)
    assert all(0.0 <= i["confidence"] <= 1.0 for i in items.values() if i["status"] == "filled")
    kept = items_of(post(client, NOTE, min_confidence=0.5))
    assert kept["age"]["status"] == "filled" and kept["spo2"]["status"] == "unknown"
    assert len(kept) == 28
    metrics = client.get("/metrics").text
    assert sample(metrics, "medlora_spans_dropped_total", task=TASK, reason="low_confidence") == 1.0


def test_a_task_of_another_type_on_the_forms_endpoint_is_400_wrong_task_type(client_for: Any) -> None:
    client, _ = client_for(lambda r: "")
    for task in ("re-it-medication", "qa-it-clinical"):
        r = client.post("/v1/forms", json={"task": task, "documents": [{"id": "d", "text": "x"}]})
        assert r.status_code == 400 and r.json()["type"] == "urn:medlora:problem:wrong-task-type", task


def test_the_task_list_shows_each_item_with_its_kind_and_bounds(client_for: Any) -> None:
    client, _ = client_for(lambda r: "")
    form = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}[TASK]
    items = {i["name"]: i for i in form["items"]}
    assert len(items) == 28 and form["item_groups"] == 2
    assert {i["kind"] for i in items.values()} == {"choice", "boolean", "integer", "decimal", "date", "text"}
    assert {k: items["spo2"][k] for k in ("kind", "min", "max", "unit")} == {
        "kind": "integer", "min": 50, "max": 100, "unit": "%"}  # fmt: skip
    assert items["temperature"]["decimals"] == 1 and items["chest_xray"]["multiple"] is True
    assert items["disposition"]["options"][0] == "dimissione a domicilio"
    assert all(i["description"] for i in items.values())


def test_a_140_item_form_is_split_into_groups_that_each_fit_and_every_item_is_answered(
    client_for: Any, fake_adapters_dir: Path, tmp_path: Path
) -> None:
    tasks_dir = tmp_path / "tasks"
    shutil.copytree(TASKS_DIR, tasks_dir, ignore=shutil.ignore_patterns("*/"))
    name = write_big_form(tasks_dir)
    write_fake_adapter(fake_adapters_dir / name)
    booleans = {i["name"] for i in big_form_items() if i["kind"] == "boolean"}

    def respond(request: GenerationRequest) -> str:
        # Every group answers its yes/no items from the note; the rest stay unknown.
        return json.dumps({n: ["febbre", True] for n in asked_items(request) if n in booleans})

    client, engine = client_for(respond, tasks_dir=tasks_dir)
    r = client.post("/v1/forms", json={"task": name, "documents": [{"id": "d", "text": "Riferisce febbre."}]})
    assert r.status_code == 200, r.text
    items = r.json()["documents"][0]["items"]
    assert [i["name"] for i in items] == [f"item_{k:03d}" for k in range(140)]
    assert {i["name"] for i in items if i["status"] == "filled"} == booleans
    groups = [asked_items(call) for call in engine.calls]
    assert len(groups) > 1 and sorted(name for group in groups for name in group) == [
        f"item_{k:03d}" for k in range(140)
    ]
    assert max(map(len, groups)) - min(map(len, groups)) <= 14  # balanced, not one big and one small
    # Each group with a full chunk of prose fits the context (the service checked at start);
    # the whole form in one generation would not.
    task = load_tasks(tasks_dir, SCHEMAS_DIR)[name]
    from app.tasks.schema import SpanBytes, worst_case_bytes
    from app.tasks.types.form import form_schema

    full_chunk = SpanBytes(("lorem ipsum " * 1500)[:1500])
    one_generation = worst_case_bytes(form_schema(task.manifest.items), full_chunk)
    per_group = [worst_case_bytes(ask.schema, full_chunk) for ask in task.kind.asks(task, {"text": "x"})]
    assert one_generation > 16384 > max(per_group) and max(per_group) <= task.manifest.generation.max_group_tokens
    assert all(call.max_tokens <= task.manifest.generation.max_group_tokens for call in engine.calls)


def test_a_few_shot_example_of_a_form_shows_each_item_group_its_own_items(tmp_path: Path) -> None:
    from app.tasks.prompts import build_messages
    from app.training.datasets import load_records
    from app.training.evaluate import few_shot_task
    from app.training.synthetic import examples_for_task, write_jsonl

    task = shipped_task(TASK)
    rows = examples_for_task(task, 2, seed=4)
    write_jsonl(tmp_path / "shots.jsonl", rows)
    shots = load_records(task, tmp_path / "shots.jsonl")
    prompted = few_shot_task(task, shots, 1)
    [example] = prompted.manifest.examples
    assert example.input["text"] == rows[0]["text"][: len(example.input["text"])]
    filled = [item["name"] for item in rows[0]["items"]]
    shown: list[str] = []
    per_group: list[int] = []
    for ask in task.kind.asks(task, {"text": "x"}):
        answer = json.loads(build_messages(prompted, {"text": "x"}, ask.part)[2]["content"])
        assert set(answer) <= set(ask.schema["properties"])  # only this group's items
        assert not list(ask.validator.iter_errors(answer))
        shown += list(answer)
        per_group.append(len(answer))
    assert shown == [name for name in filled if name in example.output]
    assert len(per_group) == 2 and min(per_group) > 0  # both groups' items came from the one note


def test_a_text_value_cut_at_a_chunk_edge_yields_to_the_whole_one_without_a_conflict(client_for: Any) -> None:
    text = first_chunk_ends_after("quadro di scompenso cardiaco ", "acuto in paziente anziano ", 1500, 200)

    def respond(request: GenerationRequest) -> str:
        chunk, out = last_input(request), {}
        if "working_diagnosis" in asked_items(request):
            if "scompenso cardiaco acuto" in chunk:
                out["working_diagnosis"] = "scompenso cardiaco acuto"
            elif chunk.endswith("scompenso cardiaco "):  # the diagnosis cut by the chunk's edge
                out["working_diagnosis"] = "scompenso cardiaco"
        return json.dumps(out)

    # The cut copy is the more confident: it must still not win, nor be an alternative.
    logprob = _item_logprob(
        {("working_diagnosis", "scompenso cardiaco"): 0.9, ("working_diagnosis", "scompenso cardiaco acuto"): 0.6}
    )
    client, engine = client_for(respond, logprob=logprob)
    diagnosis = items_of(post(client, text))["working_diagnosis"]
    assert any(last_input(call).endswith("scompenso cardiaco ") for call in engine.calls)
    start = text.index("scompenso cardiaco acuto")
    assert (diagnosis["value"], diagnosis["confidence"]) == ("scompenso cardiaco acuto", 0.6)
    assert (diagnosis["conflict"], diagnosis["alternatives"]) == (False, [])
    assert [(e["start"], e["end"]) for e in diagnosis["evidence"]] == [(start, start + 24)]


def test_evidence_cut_at_a_chunk_edge_is_not_kept_beside_the_whole_evidence(client_for: Any) -> None:
    text = first_chunk_ends_after("all'arrivo TC 38,2 ", "°C e brivido ", 1500, 200)

    def respond(request: GenerationRequest) -> str:
        chunk, out = last_input(request), {}
        if "temperature" in asked_items(request):
            if "TC 38,2 °C" in chunk:
                out["temperature"] = ["TC 38,2 °C", 38.2]
            elif chunk.endswith("TC 38,2 "):
                out["temperature"] = ["TC 38,2", 38.2]
        return json.dumps(out)

    client, engine = client_for(respond)
    temperature = items_of(post(client, text))["temperature"]
    assert any(last_input(call).endswith("TC 38,2 ") for call in engine.calls)
    start = text.index("TC 38,2 °C")
    assert temperature["value"] == 38.2 and not temperature["conflict"]
    assert [(e["start"], e["end"]) for e in temperature["evidence"]] == [(start, start + 10)]


WRONG = {**VALUES, "age": ["74 anni", 75], "visit_date": ["12/03/2024", "2024-03-13"], "spo2": ["SpO2 88%", 88]}


def test_a_value_its_evidence_states_otherwise_is_flagged_with_half_its_confidence(client_for: Any) -> None:
    logprob = _item_logprob({("age", "74 anni"): 0.8, ("spo2", "SpO2 88%"): 0.8})
    client, _ = client_for(answering(WRONG), logprob=logprob)
    items = items_of(post(client, NOTE))
    assert (items["age"]["value"], items["age"]["evidence_mismatch"], items["age"]["confidence"]) == (75, True, 0.4)
    assert items["visit_date"]["evidence_mismatch"] is True and items["visit_date"]["status"] == "filled"
    assert (items["spo2"]["evidence_mismatch"], items["spo2"]["confidence"]) == (False, 0.8)
    assert items["dyspnea_days"]["evidence_mismatch"] is False and items["temperature"]["evidence_mismatch"] is False
    metrics = client.get("/metrics").text
    assert sample(metrics, "medlora_evidence_mismatches_total", task=TASK) == 2.0


def test_with_on_evidence_mismatch_unknown_such_a_value_is_not_returned(client_for: Any, tmp_path: Path) -> None:
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    manifest = (TASKS_DIR / f"{TASK}.yaml").read_text(encoding="utf-8")
    (tasks_dir / f"{TASK}.yaml").write_text(manifest + "on_evidence_mismatch: unknown\n", encoding="utf-8")
    client, _ = client_for(answering(WRONG), tasks_dir=tasks_dir)
    items = items_of(post(client, NOTE))
    assert items["age"] == {
        "name": "age",
        "status": "unknown",
        "value": None,
        "evidence": [],
        "confidence": None,
        "conflict": False,
        "alternatives": [],
        "evidence_mismatch": True,
    }
    assert items["spo2"]["status"] == "filled" and not items["spo2"]["evidence_mismatch"]


def test_conversions_and_the_mismatch_setting_are_refused_where_they_mean_nothing(tmp_path: Path) -> None:
    ner = (TASKS_DIR / "ner-it-clinical.yaml").read_text(encoding="utf-8")
    (tmp_path / "ner.yaml").write_text(ner + "on_evidence_mismatch: unknown\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="on_evidence_mismatch"):
        load_task(tmp_path / "ner.yaml", SCHEMAS_DIR)
    form = (TASKS_DIR / f"{TASK}.yaml").read_text(encoding="utf-8")
    bad = form.replace("{name: orthopnea, kind: boolean,", "{name: orthopnea, kind: boolean, conversions: {x: 2},")
    assert bad != form
    (tmp_path / "form.yaml").write_text(bad, encoding="utf-8")
    with pytest.raises(ManifestError, match="conversions"):
        load_task(tmp_path / "form.yaml", SCHEMAS_DIR)


def test_eval_reports_the_mismatch_rate_of_each_number_and_date_item() -> None:
    task = shipped_task(TASK)
    flagged = {"items": {"age": {"value": 75}}, "evidence_mismatch": ["age"]}
    clean = {"items": {"age": {"value": 74}, "spo2": {"value": 88}}, "evidence_mismatch": []}
    unknown = {"items": {}, "evidence_mismatch": ["spo2"]}
    rates = task.kind.score(task, [{"items": {}}] * 3, [flagged, clean, unknown])["evidence_mismatch"]
    assert (rates["age"], rates["spo2"], rates["visit_date"]) == (0.5, 0.5, None)
    assert "sex" not in rates  # a choice: grounding already ties it to its evidence


def test_with_values_stated_in_note_the_grammar_offers_only_the_numbers_and_dates_the_chunk_states(
    lltok: Any,
) -> None:
    import llguidance

    from app.tasks.grammar import compile_grammar, json_escape

    task = shipped_task(TASK)
    stated = task.with_manifest(task.manifest.model_copy(update={"values_stated_in_note": True}))
    note = "Accesso del 03/02/2025. Donna di 79 anni, dispnea da 2 settimane. SpO2 87%, TC 36,8 °C."
    schemas = [ask.schema for ask in stated.kind.asks(stated, {"text": note})]
    values = {
        name: (member["prefixItems"][1] if len(member["prefixItems"]) == 2 else member["items"]).get("enum")
        for schema in schemas
        for name, member in schema["properties"].items()
        if "prefixItems" in member
    }
    assert values["spo2"] == [79, 87]  # 2, 3 and 2025 are outside 50-100
    assert values["temperature"] == [36.8]
    assert values["dyspnea_days"] == [2, 3, 14, 79, 87]  # "2 settimane" through the item's conversion
    assert values["visit_date"] == ["2025-02-03", "2025-03-02"]  # day first and month first
    assert "ph" not in values and "nt_probnp" in values  # no pH stated: the item cannot be filled
    assert values["sex"] is not None and "M" in values["sex"]  # choices keep their options
    # The compiled grammar (real Qwen3 vocabulary) admits a stated value and refuses another.
    [first] = [s for s in schemas if "spo2" in s["properties"]]
    grammar = compile_grammar(first, json_escape(note))
    for answer, admitted in (('{"spo2":["SpO2 87%",87]}', True), ('{"spo2":["SpO2 87%",88]}', False)):
        matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
        tokens = lltok.tokenize_str(answer)
        accepted = all(matcher.consume_token(t) for t in tokens) and matcher.is_accepting()
        assert accepted is admitted, answer
