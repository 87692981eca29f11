"""FHIR R4 output (fake engine, and walks over the real Qwen3 vocabulary): negotiation, the
resources each shipped task maps to, assertions as FHIR states them, evidence offsets, and
validation by two FHIR implementations (tests/support/fhir.py)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from fhir.resources.R4B.bundle import Bundle as R4BBundle
from fhirclient.models.fhirabstractbase import FHIRValidationError

from app.api.tasks import accepts_fhir
from app.tasks.calls import call_json
from app.tasks.fhir import EVIDENCE_MISMATCH_URL, FHIR_MEDIA_TYPE
from app.tasks.manifests import ManifestError, load_task
from tests.conftest import SCHEMAS_DIR, TASKS_DIR, shipped_task
from tests.support.documents import volume_documents
from tests.support.fhir import check_bundle, confidence, derivations, evidence_texts, validate_r4
from tests.support.volume import ENDPOINTS, Harness, request_body

NER_NOTE = "Nega dolore toracico. Madre con diabete. Pregresso infarto. Ecocardiogramma. Ramipril 5 mg/die."
NER_ANSWER = {
    "entities": [
        ["dolore toracico", "SYMPTOM", "negated"],
        ["diabete", "DISORDER", "family"],
        ["infarto", "DISORDER", "historical"],
        ["Ecocardiogramma", "TEST"],
        ["Ramipril", "DRUG"],
        ["5 mg/die", "DOSAGE"],
    ]
}
URN = r"urn:uuid:[0-9a-f-]{36}"
FHIR_TASKS = ("ner-it-clinical", "ner-en-clinical", "re-it-medication", "re-en-medication", "crf-it-dyspnea")


def ner_client(client_for: Any) -> Any:
    client, _ = client_for(lambda r: json.dumps(NER_ANSWER))
    return client


def ner_body(**extra: Any) -> dict[str, Any]:
    return {"task": "ner-it-clinical", "documents": [{"id": "letter-7", "text": NER_NOTE}], **extra}


def by_type(resources: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        found.setdefault(resource["resourceType"], []).append(resource)
    return found


def code(concept: dict[str, Any]) -> str:
    return str(concept["coding"][0]["code"])


# -- negotiation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "fhir"),
    [
        (FHIR_MEDIA_TYPE, True),
        (f"{FHIR_MEDIA_TYPE}; fhirVersion=4.0", True),
        (f"application/json;q=0.5, {FHIR_MEDIA_TYPE}", True),
        (f"application/json, {FHIR_MEDIA_TYPE};q=0.5", False),
        (f"{FHIR_MEDIA_TYPE};q=0", False),
        ("*/*", False),
        ("application/json", False),
        (None, False),
    ],
)
def test_fhir_is_answered_when_the_accept_header_prefers_it(accept: str | None, fhir: bool) -> None:
    assert accepts_fhir(accept) is fhir


def test_accept_fhir_and_format_fhir_answer_the_same_validated_bundle(client_for: Any) -> None:
    client = ner_client(client_for)
    by_header = client.post("/v1/ner", json=ner_body(), headers={"Accept": FHIR_MEDIA_TYPE})
    by_body = client.post("/v1/ner", json=ner_body(format="fhir"))
    for response in (by_header, by_body):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith(FHIR_MEDIA_TYPE)
        assert "fhirVersion=4.0" in response.headers["content-type"]
    a, b = by_header.json(), by_body.json()
    check_bundle(a, {"letter-7": NER_NOTE})
    # Full URLs are unique per request (urn:uuid); everything else is the same.
    assert re.sub(URN, "urn", json.dumps(a["entry"])) == re.sub(URN, "urn", json.dumps(b["entry"]))
    assert client.post("/v1/ner", json=ner_body()).headers["content-type"] == "application/json"


def test_endpoints_and_tasks_without_a_fhir_mapping_refuse_fhir_with_a_problem(client_for: Any, tmp_path: Path) -> None:
    client, _ = client_for(lambda r: json.dumps({"answer": None}))
    qa = {"task": "qa-it-clinical", "items": [{"id": "q", "context": "Febbre.", "question": "Febbre?"}]}
    refused = client.post("/v1/qa", json=qa, headers={"Accept": FHIR_MEDIA_TYPE})
    assert refused.status_code == 406
    assert refused.json()["type"] == "urn:medlora:problem:not-acceptable"
    assert client.post("/v1/qa", json={**qa, "format": "fhir"}).status_code == 422  # not a field of QA

    tasks = tmp_path / "tasks"
    shutil.copytree(TASKS_DIR, tasks)
    manifest = (tasks / "ner-it-clinical.yaml").read_text(encoding="utf-8")
    (tasks / "ner-it-clinical.yaml").write_text(manifest.split("\nfhir:")[0] + "\n", encoding="utf-8")
    client, _ = client_for(lambda r: json.dumps(NER_ANSWER), tasks_dir=tasks)
    unmapped = client.post("/v1/ner", json=ner_body(format="fhir"))
    assert (unmapped.status_code, unmapped.json()["type"]) == (406, "urn:medlora:problem:not-acceptable")
    assert client.post("/v1/ner", json=ner_body()).status_code == 200


def test_review_keeps_json_and_refuses_fhir(client_for: Any) -> None:
    client = ner_client(client_for)
    refused = client.post("/v1/reviews/annotate/ner", json=ner_body(format="fhir"))
    assert (refused.status_code, refused.json()["type"]) == (422, "urn:medlora:problem:invalid-request")


# -- what the resources say -----------------------------------------------------------------


def test_ner_entities_map_to_conditions_drugs_tests_and_family_history_with_assertions(client_for: Any) -> None:
    client = ner_client(client_for)
    bundle = client.post("/v1/ner", json=ner_body(format="fhir")).json()
    resources = by_type(check_bundle(bundle, {"letter-7": NER_NOTE})["letter-7"])
    assert sorted(resources) == ["Condition", "FamilyMemberHistory", "MedicationStatement", "Observation"]

    conditions = {c["code"]["text"]: c for c in resources["Condition"]}
    assert set(conditions) == {"dolore toracico", "infarto"}  # the mother's diabetes is not the patient's
    negated, history = conditions["dolore toracico"], conditions["infarto"]
    assert code(negated["verificationStatus"]) == "refuted" and "clinicalStatus" not in negated
    assert code(history["verificationStatus"]) == "confirmed"
    assert (code(history["clinicalStatus"]), code(history["category"][0])) == ("inactive", "problem-list-item")

    [family] = resources["FamilyMemberHistory"]
    assert family["condition"][0]["code"]["text"] == "diabete"
    assert evidence_texts(family, NER_NOTE) == ["diabete"]
    [drug] = resources["MedicationStatement"]
    assert (drug["medicationCodeableConcept"]["text"], drug["status"]) == ("Ramipril", "active")
    [test] = resources["Observation"]
    assert (test["code"]["text"], test["status"]) == ("Ecocardiogramma", "preliminary")
    # DOSAGE is not mapped by NER (no relation ties it to its drug): nothing cites "5 mg/die".
    cited = {t for found in resources.values() for r in found for t in evidence_texts(r, NER_NOTE)}
    assert cited == {"dolore toracico", "diabete", "infarto", "Ecocardiogramma", "Ramipril"}


def test_the_document_reference_names_the_callers_id_and_carries_the_text_only_when_asked(client_for: Any) -> None:
    client = ner_client(client_for)
    for attach in (False, True):
        bundle = client.post("/v1/ner", json=ner_body(format="fhir", attach_text=attach)).json()
        [document] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"]
        assert document["identifier"] == [{"value": "letter-7"}]
        attachment = document["content"][0]["attachment"]
        if attach:
            assert base64.b64decode(attachment["data"]).decode("utf-8") == NER_NOTE
        else:
            assert "data" not in attachment and NER_NOTE not in json.dumps(bundle)


def test_offsets_are_code_points_of_the_text_as_sent_like_the_json_answer(client_for: Any) -> None:
    text = "🙂 Cafe\u0301: nega dolore toracico."  # an astral character and an NFD letter before the span
    client, _ = client_for(lambda r: json.dumps({"entities": [["dolore toracico", "SYMPTOM", "negated"]]}))
    body = {"task": "ner-it-clinical", "documents": [{"id": "d", "text": text}]}
    [entity] = client.post("/v1/ner", json=body).json()["documents"][0]["entities"]
    bundle = client.post("/v1/ner", json={**body, "format": "fhir"}).json()
    [condition] = check_bundle(bundle, {"d": text})["d"]
    [(_, offset, length)] = derivations(condition)
    assert (offset, offset + length) == (entity["start"], entity["end"])
    assert confidence(condition) == pytest.approx(entity["confidence"], abs=1e-4)


def test_relations_fill_a_medication_statements_dosage(client_for: Any) -> None:
    note = "Si prescrive amoxicillina 1 g per os ogni 8 ore per 6 giorni. Si sospende warfarin."
    written = {
        "entities": [
            ["amoxicillina", "DRUG"],
            ["1 g", "DOSAGE"],
            ["per os", "ROUTE"],
            ["ogni 8 ore", "FREQUENCY"],
            ["per 6 giorni", "DURATION"],
            ["warfarin", "DRUG"],
        ],
        "relations": [["dosage", 0, 1], ["route", 0, 2], ["frequency", 0, 3], ["duration", 0, 4]],
    }
    client, _ = client_for(lambda r: json.dumps(written))
    body = {"task": "re-it-medication", "documents": [{"id": "d", "text": note}], "format": "fhir"}
    response = client.post("/v1/relations", json=body)
    statements = check_bundle(response.json(), {"d": note})["d"]
    assert [s["medicationCodeableConcept"]["text"] for s in statements] == ["amoxicillina", "warfarin"]
    amoxicillin, warfarin = statements
    [dosage] = amoxicillin["dosage"]
    assert dosage["text"] == "1 g per os ogni 8 ore per 6 giorni"
    assert dosage["doseAndRate"][0]["doseQuantity"] == {
        "value": 1,
        "unit": "g",
        "system": "http://unitsofmeasure.org",
        "code": "g",
    }
    assert dosage["route"] == {"text": "per os"}
    repeat = dosage["timing"]["repeat"]
    assert (repeat["frequency"], repeat["period"], repeat["periodUnit"]) == (1, 8, "h")
    assert (repeat["boundsDuration"]["value"], repeat["boundsDuration"]["code"]) == (6, "d")
    assert evidence_texts(amoxicillin, note) == ["amoxicillina", "1 g", "per os", "ogni 8 ore", "per 6 giorni"]
    # The relation task says nothing of whether a drug is taken: FHIR's "unknown", never a guess.
    assert (amoxicillin["status"], "dosage" in warfarin) == ("unknown", False)


FORM_NOTE = (
    "Accesso del 12/03/2024. Uomo di 74 anni. SpO2 88% in aria ambiente, TC 38,2 °C. "
    "Rx torace: congestione polmonare e versamento pleurico. Nega dolore toracico. FC 117 bpm."
)


def test_form_items_become_coded_observations_with_ucum_units(client_for: Any) -> None:
    from tests.test_forms import answering

    values = {
        "visit_date": ["12/03/2024", "2024-03-12"],
        "age": ["74 anni", 74],
        "spo2": ["SpO2 88%", 88],
        "temperature": ["TC 38,2 °C", 38.2],
        "chest_xray": ["congestione polmonare e versamento pleurico", "congestione polmonare", "versamento pleurico"],
        "chest_pain": ["Nega dolore toracico", False],
        "heart_rate": ["FC 117 bpm", 144],  # its evidence says otherwise: flagged
    }
    client, _ = client_for(answering(values))
    body = {"task": "crf-it-dyspnea", "documents": [{"id": "d", "text": FORM_NOTE}], "format": "fhir"}
    observations = check_bundle(client.post("/v1/forms", json=body).json(), {"d": FORM_NOTE})["d"]
    named: dict[str, list[dict[str, Any]]] = {}
    for observation in observations:
        assert observation["resourceType"] == "Observation" and observation["status"] == "preliminary"
        item = observation["code"]["coding"][0]
        assert item["system"] == "urn:medlora:form:crf-it-dyspnea"
        named.setdefault(item["code"], []).append(observation)
    assert sorted(named) == sorted(values)  # unknown items are left out
    [spo2] = named["spo2"]
    assert spo2["code"]["coding"][1] == {
        "system": "http://loinc.org",
        "code": "59408-5",
        "display": "Oxygen saturation in Arterial blood by Pulse oximetry",
    }
    assert spo2["valueQuantity"] == {"value": 88, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    assert named["temperature"][0]["valueQuantity"]["code"] == "Cel"
    assert named["age"][0]["valueQuantity"]["code"] == "a"
    assert named["visit_date"][0]["valueDateTime"] == "2024-03-12"
    assert named["chest_pain"][0]["valueBoolean"] is False
    assert sorted(o["valueCodeableConcept"]["text"] for o in named["chest_xray"]) == [
        "congestione polmonare",
        "versamento pleurico",
    ]
    assert evidence_texts(spo2, FORM_NOTE) == ["SpO2 88%"]
    mismatch = lambda o: any(e["url"] == EVIDENCE_MISMATCH_URL for e in o["extension"])  # noqa: E731
    assert [name for name, found in named.items() if any(mismatch(o) for o in found)] == ["heart_rate"]


def test_a_batch_line_asking_for_fhir_gets_the_bundle(client_for: Any) -> None:
    client = ner_client(client_for)
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/ner", "body": ner_body(format="fhir")}
    uploaded = oai.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="batch")
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/ner", completion_window="24h")
    deadline = time.monotonic() + 20
    while (batch := oai.batches.retrieve(batch.id)).status != "completed":
        assert time.monotonic() < deadline, batch
        time.sleep(0.02)
    assert batch.output_file_id is not None
    [output] = [json.loads(x) for x in oai.files.content(batch.output_file_id).text.splitlines()]
    assert output["response"]["status_code"] == 200
    resources = check_bundle(output["response"]["body"], {"letter-7": NER_NOTE})["letter-7"]
    assert len(resources) == 5


# -- manifests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "mapping", "message"),
    [
        ("ner-it-clinical", "fhir: {labels: {DIAGNOSIS: Condition}}", "fhir.labels.DIAGNOSIS: the task has no label"),
        ("ner-it-clinical", "fhir: {labels: {DRUG: Medication}}", "fhir.labels.DRUG"),
        ("ner-en-clinical", "fhir: {attributes: {historical: historical}}", "fhir.attributes.historical"),
        ("re-it-medication", "fhir: {relations: {dosage: dose}}", "fhir.relations.dosage: its heads must all map"),
        ("crf-it-dyspnea", "fhir: {items: {sex: {ucum: a}}}", "fhir.items.sex.ucum: only number items"),
        ("crf-it-dyspnea", "fhir: {items: {age: {code: {system: loinc, code: x}}}}", "fhir.items.age.code.system"),
        ("qa-it-clinical", "fhir: {}", "fhir: qa tasks have no fhir"),
    ],
)
def test_a_fhir_mapping_that_names_what_the_task_lacks_is_refused_at_startup(
    tmp_path: Path, task: str, mapping: str, message: str
) -> None:
    manifest = (TASKS_DIR / f"{task}.yaml").read_text(encoding="utf-8").split("\nfhir:")[0]
    path = tmp_path / f"{task}.yaml"
    path.write_text(f"{manifest}\n{mapping}\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_task(path, SCHEMAS_DIR)


def test_the_validators_catch_what_r4_forbids() -> None:
    good = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:0b7e4c1c-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient"}}
        ],
    }
    validate_r4(good)
    missing_status = {"resourceType": "MedicationStatement", "subject": {"reference": "Patient/1"}}
    wrong_type = {"resourceType": "Patient", "birthDate": "yesterday"}
    unknown_element = {"resourceType": "Patient", "confidence": 0.5}
    for resource in (missing_status, wrong_type, unknown_element):
        bad = {**good, "entry": [{"fullUrl": good["entry"][0]["fullUrl"], "resource": resource}]}
        with pytest.raises((ValueError, FHIRValidationError)):
            R4BBundle.model_validate(bad)
        with pytest.raises(FHIRValidationError):
            validate_r4_strict_only(bad)


def validate_r4_strict_only(bundle: dict[str, Any]) -> None:
    from fhirclient.models.bundle import Bundle as R4Bundle

    R4Bundle(bundle, strict=True)


# -- the worst case: answers walked at random over the real Qwen3 vocabulary -------------


def _expected_evidence(task_name: str, document: dict[str, Any]) -> list[tuple[int, int]]:
    """The first evidence span of each resource the JSON answer should become (see app/tasks/fhir.py)."""
    task = shipped_task(task_name)
    mapping = task.manifest.fhir
    assert mapping is not None
    if task.type == "form":
        spans = []
        for item in document["items"]:
            if item["status"] == "filled":
                first = item["evidence"][0]
                count = len(item["value"]) if isinstance(item["value"], list) else 1
                spans += [(first["start"], first["end"] - first["start"])] * count
        return spans
    spans = []
    for entity in document["entities"]:
        kind = mapping.labels.get(entity["label"])
        said = {mapping.attributes[a] for a, v in entity["attributes"].items() if v and a in mapping.attributes}
        if kind is None or ("family" in said and (kind != "Condition" or "negated" in said)):
            continue
        if kind == "Observation" and "negated" in said:
            continue
        spans.append((entity["start"], entity["end"] - entity["start"]))
    return spans


def test_walked_answers_of_every_fhir_task_become_valid_bundles_citing_their_spans() -> None:
    harness = Harness({name: shipped_task(name) for name in FHIR_TASKS})
    try:
        resources = 0
        for index, name, payload in volume_documents(FHIR_TASKS, 40, 5):
            task = harness.service.tasks[name]
            body = request_body(task, f"d{index}", payload)
            answers = []
            for asked in (body, {**body, "format": "fhir"}):
                harness.engine.salt = str(index)  # the same walk for both
                call = call_json(harness.service, ENDPOINTS[task.type], asked, request_id="r", origin="api", priority=0)
                answers.append(harness.loop.run_until_complete(call))
            plain, bundle = answers
            found = check_bundle(bundle, {f"d{index}": payload["text"]})[f"d{index}"]
            cited = sorted(derivations(r)[0][1:] for r in found)
            assert cited == sorted(_expected_evidence(name, plain["documents"][0])), (name, index)
            resources += len(found)
        assert resources > 100  # the walks did answer: this checked bundles with content
    finally:
        harness.close()


def test_entity_codes_become_codings_of_the_condition_and_family_history(client_for: Any) -> None:
    from tests.test_terminology import first_candidate

    client, engine = client_for(lambda r: json.dumps(NER_ANSWER))
    engine.link = first_candidate
    plain = client.post("/v1/ner", json=ner_body()).json()["documents"][0]["entities"]
    codes = {e["text"]: e["codes"] for e in plain if e["codes"]}
    assert {"dolore toracico", "diabete", "infarto"} <= set(codes)
    resources = by_type(
        check_bundle(client.post("/v1/ner", json=ner_body(format="fhir")).json(), {"letter-7": NER_NOTE})["letter-7"]
    )
    concepts = {c["code"]["text"]: c["code"] for c in resources["Condition"]}
    concepts["diabete"] = resources["FamilyMemberHistory"][0]["condition"][0]["code"]
    for text, concept in concepts.items():
        assert concept["coding"] == [
            {"system": c["system"], "code": c["code"], "display": c["display"]} for c in codes[text]
        ]
        assert concept["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10-cm"
