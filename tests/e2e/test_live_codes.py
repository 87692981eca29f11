"""Entity codes end to end against real vLLM: on the random-weight tiny Qwen3 with the real
Qwen3 vocabulary (the worst case for the linking grammar) and on the shipped demo from the
built wheel, every code an entity answers is a code of the task's terminology file and one
of the candidates the matcher offered for that entity's text, with a probability."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import shipped_task
from tests.e2e.conftest import SAMPLED, LiveServer
from tests.fakes import sample

pytestmark = pytest.mark.e2e

NOTES = {
    "it": [
        "Ricovero per polmonite e scompenso cardiaco acuto. Riferisce febbre e dispnea; nega dolore toracico.",
        "Anamnesi: ipertensione arteriosa, diabete mellito di tipo 2, fibrillazione atriale. Lamenta cefalea.",
        "Diagnosi di dimissione: riacutizzazione di BPCO, insufficienza respiratoria acuta. Astenia e inappetenza.",
    ],
    "en": [
        "Admitted for pneumonia and acute heart failure. Reports fever and shortness of breath; denies chest pain.",
        "History of hypertension, type 2 diabetes mellitus and atrial fibrillation. Complains of headache.",
        "Discharge diagnosis: COPD exacerbation, acute respiratory failure. Fatigue and loss of appetite.",
    ],
}


def check_codes(name: str, body: dict[str, Any]) -> int:
    """Every code is the file's and a candidate of its entity; the number of coded entities."""
    task = shipped_task(name.removesuffix(SAMPLED))
    coded = 0
    for document in body["documents"]:
        for entity in document["entities"]:
            coding = task.coding.get(entity["label"])
            if coding is None:
                assert entity["codes"] == [], entity
                continue
            assert len(entity["codes"]) <= 1
            offered = coding.terminology.candidates(
                entity["text"], task.manifest.languages, coding.candidates, coding.min_score
            )
            for code in entity["codes"]:
                assert (code["system"], code["code"]) in coding.terminology.codes()
                match = [c.concept for c in offered if c.concept.code == code["code"]]
                assert match, (code, [c.concept.code for c in offered])
                assert code["display"] == match[0].display
                assert isinstance(code["confidence"], float) and 0.0 <= code["confidence"] <= 1.0
                coded += 1
    return coded


def post_notes(client: httpx.Client, name: str) -> dict[str, Any]:
    language = "en" if "-en-" in name else "it"
    docs = [{"id": f"n{i}", "text": text} for i, text in enumerate(NOTES[language])]
    r = client.post("/v1/ner", json={"task": name, "documents": docs})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.mark.parametrize("name", [n + s for n in ("ner-it-clinical", "ner-en-clinical") for s in ("", SAMPLED)])
def test_random_weights_answer_only_codes_of_the_file_among_the_candidates(client: httpx.Client, name: str) -> None:
    check_codes(name, post_notes(client, name))


def test_the_demo_codes_entities_with_the_file_s_codes(demo_server: LiveServer) -> None:
    with demo_server.client() as client:
        coded = sum(check_codes(name, post_notes(client, name)) for name in ("ner-it-clinical", "ner-en-clinical"))
        metrics = client.get("/metrics").text

    def links(outcome: str) -> float:
        return sum(
            sample(metrics, "medlora_entity_links_total", task=name, adapter=f"{name}@1", outcome=outcome) or 0.0
            for name in ("ner-it-clinical", "ner-en-clinical")
        )

    # The demo's NER adapters find these disorders: each got a linking generation, coded or not
    # (the server may have served other tests too, hence at least).
    assert links("coded") + links("abstained") > 0 and links("coded") >= coded
