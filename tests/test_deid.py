"""De-identification: the deterministic detectors, surrogates, the join with the model's spans,
and `POST /v1/deid` on the fake engine (real vLLM: tests/e2e/test_live_deid.py)."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import pytest
from codicefiscale import codicefiscale

from app.tasks.grounding import Span
from app.tasks.phi_detectors import detect_phi
from app.tasks.surrogates import deidentify
from app.tasks.types.base import Tally
from app.tasks.types.deid import join_spans
from tests.fakes import ner_output

VALID_CF = "RSSMRA85T10A562S"
NOTE = (
    "Paziente Mario Rossi, CF RSSMRA85T10A562S, nato il 10/12/1935, di 92 anni. "
    "Tel. +39 02 1234 5678, e-mail mario.rossi@ospedale-esempio.it. Ricovero del 12 marzo 2024, "
    "cartella clinica n. 2024/004512. Il sig. Rossi riferisce dispnea. PA 130/80 mmHg."
)


def found(text: str) -> list[tuple[str, str]]:
    return [(s.label, s.text) for s in detect_phi(text)]


def test_codice_fiscale_check_character_decides_its_confidence() -> None:
    wrong = VALID_CF[:-1] + ("A" if VALID_CF[-1] != "A" else "B")
    assert codicefiscale.is_valid(VALID_CF) and not codicefiscale.is_valid(wrong)
    spans = {s.text: s for s in detect_phi(f"CF {VALID_CF}; altro CF {wrong}.")}
    assert spans[VALID_CF].label == spans[wrong].label == "CODICE_FISCALE"
    # A wrong check character is most likely a typo of a real code: still masked, less surely.
    assert spans[VALID_CF].confidence == 0.99
    assert spans[wrong].confidence is not None and spans[wrong].confidence < 0.99


@pytest.mark.parametrize(
    "text, expected",
    [
        ("scrivere a anna.bianchi@asl.example.it oggi", ("EMAIL", "anna.bianchi@asl.example.it")),
        ("cell. 333 123 4567.", ("PHONE", "333 123 4567")),
        ("tel +39 06 4991 1234", ("PHONE", "+39 06 4991 1234")),
        ("call (617) 555-0134 today", ("PHONE", "(617) 555-0134")),
        ("visto il 03/04/2023 in PS", ("DATE", "03/04/2023")),
        ("dimesso il 5 gennaio 2024", ("DATE", "5 gennaio 2024")),
        ("seen on March 5, 2023.", ("DATE", "March 5, 2023")),
        ("data 2023-11-30.", ("DATE", "2023-11-30")),
        ("see https://portale.example.it/referti/123.", ("URL", "https://portale.example.it/referti/123")),
        ("tessera 80380000012345678901", ("TESSERA_SANITARIA", "80380000012345678901")),
        ("MRN: A1234567 on file", ("RECORD_ID", "A1234567")),
        ("a 93-year-old man", ("AGE", "93")),
    ],
)
def test_fixed_shape_identifiers_are_found_exactly(text: str, expected: tuple[str, str]) -> None:
    assert expected in found(text)


def test_clinical_numbers_and_younger_ages_are_not_phi() -> None:
    text = "Paziente di 74 anni. PA 130/80 mmHg, FC 88 bpm, SpO2 94%. Amoxicillina 1 g ogni 8 ore per 7 giorni."
    assert found(text) == []


def test_detection_never_opens_a_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("detection tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    labels = {label for label, _ in found(NOTE + " Sito www.ospedale-esempio.it, posta info@asl.example.org.")}
    assert {"EMAIL", "URL", "CODICE_FISCALE"} <= labels


def test_masking_leaves_nothing_of_the_identifiers() -> None:
    spans = detect_phi(NOTE)
    masked, replacements = deidentify(NOTE, spans, "mask")
    for span in spans:
        assert span.text not in masked
        assert f"[{span.label}]" in masked
    for r in replacements:
        assert masked[r.start : r.end] == r.text == f"[{r.label}]"
        assert NOTE[r.original_start : r.original_end] == r.original


def test_surrogates_are_consistent_within_a_note_and_valid() -> None:
    text = "Mario Rossi, CF RSSMRA85T10A562S. Il sig. Rossi e Mario Rossi. Visita il 10/03/2024 e il 20/03/2024."
    spans = sorted(
        [
            *detect_phi(text),
            Span(0, 11, "Mario Rossi", "NAME"),
            Span(42, 47, "Rossi", "NAME"),
            Span(50, 61, "Mario Rossi", "NAME"),
        ],
        key=lambda s: s.start,
    )
    out, replacements = deidentify(text, spans, "surrogate", seed=5)
    names = [r.text for r in replacements if r.label == "NAME"]
    assert names[0] == names[2] != "Mario Rossi"
    assert names[1] == names[0].split()[-1]  # the surname alone keeps the surname's surrogate
    cf = next(r.text for r in replacements if r.label == "CODICE_FISCALE")
    assert cf != VALID_CF and codicefiscale.is_valid(cf)
    dates = [r.text for r in replacements if r.label == "DATE"]
    assert "10/03/2024" not in out and "20/03/2024" not in out
    # One shift per note: the 10 days between the two visits still hold.
    import datetime as dt

    first, second = (dt.datetime.strptime(d, "%d/%m/%Y") for d in dates)
    assert (second - first).days == 10


def test_surrogates_change_between_notes() -> None:
    spans = [Span(0, 11, "Mario Rossi", "NAME")]
    seen = {deidentify("Mario Rossi.", spans, "surrogate")[0] for _ in range(5)}
    assert len(seen) > 1


def test_model_span_overlapping_a_detector_span_keeps_only_what_lies_outside() -> None:
    text = "Recapito: Via Roma 1, tel. 333 123 4567 (casa)."
    detected = detect_phi(text)
    phone = next(s for s in detected if s.label == "PHONE")
    model = [Span(10, 39, text[10:39], "ADDRESS", confidence=0.4)]
    tally = Tally()
    joined = join_spans(text, detected, model, tally)
    assert phone in joined
    assert [(s.label, s.text) for s in joined if s.label == "ADDRESS"] == [("ADDRESS", "Via Roma 1, tel")]
    assert tally.dropped["overlaps_detector"] == 1


def _deid(client: Any, **body: Any) -> Any:
    return client.post("/v1/deid", json={"documents": [{"id": "d1", "text": NOTE}], **body})


def test_deid_route_masks_model_and_detector_spans(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output(("Mario Rossi", "NAME"), ("Rossi", "NAME")))
    r = _deid(client)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "deid-clinical" and body["replace"] == "mask"
    doc = body["documents"][0]
    assert doc["mapping"] is None
    for span in doc["spans"]:
        assert NOTE[span["start"] : span["end"]] == span["text"]
        assert span["text"] not in doc["deidentified"]
    labels = {s["label"] for s in doc["spans"]}
    assert {"NAME", "CODICE_FISCALE", "DATE", "AGE", "PHONE", "EMAIL", "RECORD_ID"} <= labels
    assert doc["deidentified"].startswith("Paziente [NAME], CF [CODICE_FISCALE], nato il [DATE], di [AGE] anni.")
    assert "Il sig. [NAME] riferisce dispnea. PA 130/80 mmHg." in doc["deidentified"]


def test_deid_mapping_only_when_asked_and_it_leads_back(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output(("Mario Rossi", "NAME"), ("Rossi", "NAME")))
    doc = _deid(client, replace="surrogate", return_mapping=True).json()["documents"][0]
    out = doc["deidentified"]
    assert "Mario" not in out and VALID_CF not in out
    rebuilt, cursor = [], 0
    for m in doc["mapping"]:
        assert out[m["start"] : m["end"]] == m["text"]
        rebuilt += [out[cursor : m["start"]], m["original"]]
        cursor = m["end"]
    assert "".join([*rebuilt, out[cursor:]]) == NOTE


def test_deid_refuses_an_unknown_replace_mode_without_echoing_the_note(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output())
    r = _deid(client, replace="redact")
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert "Rossi" not in r.text and VALID_CF not in r.text


def test_deid_logs_hold_no_phi(client_for: Any, caplog: pytest.LogCaptureFixture) -> None:
    client, _ = client_for(lambda r: ner_output(("Mario Rossi", "NAME")))
    with caplog.at_level(logging.DEBUG):
        assert _deid(client, replace="surrogate", return_mapping=True).status_code == 200
        metrics = client.get("/metrics").text
    logged = "\n".join(json.dumps(record.__dict__, default=str) for record in caplog.records)
    for phi in ("Rossi", VALID_CF, "2024/004512", "mario.rossi", "1234 5678", "10/12/1935"):
        assert phi not in logged and phi not in metrics
