"""Terminologies and entity linking: loading and refusing files, candidate search, the linking
grammar over the real Qwen3 vocabulary, codes on entities (fake engine), linking metrics."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.engine.base import GenerationRequest
from app.tasks.grammar import compile_grammar
from app.tasks.linking import link_asks
from app.tasks.manifests import ManifestError, load_task
from app.tasks.schema import worst_case_bytes
from app.tasks.terminology import TerminologyError, load_terminology, normalize
from app.training.synthetic import world_for
from app.training.synthetic.codes import ICD10CM, PLANTED
from tests.conftest import SCHEMAS_DIR, TASKS_DIR, accepts, shipped_task
from tests.fakes import ner_output, prompt_of
from tests.support.qwen3 import qwen3_tokenizer
from tests.test_grammar_walks import walk

SHIPPED = TASKS_DIR / "terminologies" / "icd10cm-demo.tsv"
HEADER = "system\tcode\tdisplay\tsynonyms\tlanguage\n"


def write(tmp_path: Path, *rows: str, name: str = "t.tsv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_the_shipped_subset_loads_and_holds_every_code_the_synthetic_notes_plant() -> None:
    terminology = load_terminology(SHIPPED)
    assert terminology.systems == [ICD10CM]
    assert {(ICD10CM, code) for code in PLANTED.values()} <= terminology.codes()
    assert {c.language for c in terminology.concepts} == {"en", "it"}


@pytest.mark.parametrize(
    ("rows", "line", "field"),
    [
        ((f"{ICD10CM}\tI10\tHypertension\t\ten", f"{ICD10CM}\tI10\tEssential hypertension\t\ten"), 3, "code"),
        ((f"{ICD10CM}\tI10\tHypertension\t\ten", f"{ICD10CM}\tR52\t\tdolore\tit"), 3, "display"),
        (("http://hl7.org/fhir/sid/icd-10-cn\tI10\tHypertension\t\ten",), 2, "system"),
        (("icd10\tI10\tHypertension\t\ten",), 2, "system"),
        ((f"{ICD10CM}\tnone\tNothing\t\ten",), 2, "code"),
        ((f"{ICD10CM}\tI10\tHypertension\t\titaliano",), 2, "language"),
    ],
    ids=["duplicate-code", "empty-display", "unknown-system", "not-a-uri", "reserved-code", "bad-language"],
)
def test_a_bad_file_is_refused_naming_file_line_and_field(
    tmp_path: Path, rows: tuple[str, ...], line: int, field: str
) -> None:
    path = write(tmp_path, *rows)
    with pytest.raises(TerminologyError, match=rf"^{re.escape(str(path))}:{line}: {field}: "):
        load_terminology(path)


def test_the_same_code_in_another_language_is_not_a_duplicate(tmp_path: Path) -> None:
    path = write(tmp_path, f"{ICD10CM}\tR52\tPain, unspecified\tpain\ten", f"{ICD10CM}\tR52\tDolore\tdolore\tit")
    assert len(load_terminology(path).concepts) == 2


def test_a_system_the_manifest_declares_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "urn:oid:2.16.840.1.113883.6.73\tJ01CA04\tamoxicillina\t\tit")
    with pytest.raises(TerminologyError, match="system: unknown system"):
        load_terminology(path)
    assert load_terminology(path, ["urn:oid:2.16.840.1.113883.6.73"]).codes() == {
        ("urn:oid:2.16.840.1.113883.6.73", "J01CA04")
    }


def test_csv_files_are_read_with_commas(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("code,system,display,synonyms,language\nI10," + ICD10CM + ',"Hypertension, essential",,en\n')
    assert load_terminology(path).concepts[0].display == "Hypertension, essential"


def manifest_with(tmp_path: Path, terminology: dict[str, Any]) -> Path:
    raw = yaml.safe_load((TASKS_DIR / "ner-it-clinical.yaml").read_text(encoding="utf-8"))
    raw["terminologies"] = [terminology]
    path = tmp_path / "ner-it-clinical.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_start_up_refuses_a_manifest_whose_terminology_file_is_bad(tmp_path: Path) -> None:
    write(tmp_path, f"{ICD10CM}\tJ18.9\tPolmonite\t\tit", f"{ICD10CM}\tJ18.9\tPolmonite batterica\t\tit")
    path = manifest_with(tmp_path, {"labels": ["DISORDER"], "file": "t.tsv"})
    with pytest.raises(ManifestError, match=r"terminologies\.0\.file: .*t\.tsv:3: code: duplicate code 'J18.9'"):
        load_task(path, SCHEMAS_DIR)


@pytest.mark.parametrize(
    ("terminology", "message"),
    [
        ({"labels": ["DIAGNOSIS"], "file": "t.tsv"}, r"terminologies\.0\.labels: unknown label 'DIAGNOSIS'"),
        ({"labels": ["DISORDER"], "file": "missing.tsv"}, r"terminologies\.0\.file: .*missing\.tsv: cannot read"),
        ({"labels": ["DISORDER"], "file": "en.tsv"}, r"terminologies\.0\.file: .*no codes in the task's languages"),
    ],
)
def test_start_up_refuses_a_terminology_that_does_not_fit_the_task(
    tmp_path: Path, terminology: dict[str, Any], message: str
) -> None:
    write(tmp_path, f"{ICD10CM}\tJ18.9\tPolmonite\t\tit")
    write(tmp_path, f"{ICD10CM}\tJ18.9\tPneumonia\t\ten", name="en.tsv")
    with pytest.raises(ManifestError, match=message):
        load_task(manifest_with(tmp_path, terminology), SCHEMAS_DIR)


def test_a_shipped_manifest_mounted_elsewhere_finds_the_shipped_terminology(tmp_path: Path) -> None:
    shutil.copy(TASKS_DIR / "ner-en-clinical.yaml", tmp_path / "ner-en-clinical.yaml")
    task = load_task(tmp_path / "ner-en-clinical.yaml", SCHEMAS_DIR)
    assert task.coding["DISORDER"].terminology.source == SHIPPED


def test_normalization_ignores_case_accents_and_punctuation() -> None:
    assert normalize("Difficoltà  RESPIRATORIA.") == normalize("difficolta respiratoria")
    assert normalize("Parkinson's disease") == "parkinson s disease"


@pytest.mark.parametrize(
    ("task", "text", "code"),
    [
        ("ner-it-clinical", "Polmonite", "J18.9"),
        ("ner-it-clinical", "scompenso cardiaco", "I50.9"),
        ("ner-it-clinical", "difficolta respiratoria", "R06.00"),
        ("ner-en-clinical", "COPD exacerbation", "J44.1"),
        ("ner-en-clinical", "type II diabetes mellitus", "E11.9"),
    ],
)
def test_candidates_put_the_closest_name_first_in_the_task_language(task: str, text: str, code: str) -> None:
    coding = shipped_task(task).coding["DISORDER"]
    found = coding.terminology.candidates(text, shipped_task(task).manifest.languages, 5, 70)
    assert found[0].concept.code == code
    assert len(found) <= 5 and len({c.concept.code for c in found}) == len(found)
    assert {c.concept.language for c in found} == {shipped_task(task).manifest.languages[0]}


def test_a_text_like_no_name_has_no_candidates() -> None:
    task = shipped_task("ner-it-clinical")
    assert task.coding["SYMPTOM"].terminology.candidates("xyzzy qwerty", ["it"], 5, 70) == []


NOTE = "Paziente con polmonite e febbre; nega dolore toracico. In terapia con ramipril 5 mg/die."


def entities_of(task_name: str) -> list[Any]:
    from app.tasks.grounding import Span

    task = shipped_task(task_name)
    spans = [("polmonite", "DISORDER"), ("febbre", "SYMPTOM"), ("dolore toracico", "SYMPTOM"), ("ramipril", "DRUG")]
    return [Span(NOTE.index(t), NOTE.index(t) + len(t), t, label) for t, label in spans if label in task.label_names]


def test_only_entities_of_coded_labels_with_candidates_get_a_linking_ask() -> None:
    task = shipped_task("ner-it-clinical")
    links = link_asks(task, NOTE, entities_of("ner-it-clinical"))
    assert [link.index for link in links] == [0, 1, 2]  # ramipril's DRUG label has no terminology
    first = links[0]
    assert first.candidates[0].concept.code == "J18.9"
    assert first.ask.schema["properties"]["code"]["enum"] == [*(c.concept.code for c in first.candidates), "none"]


def test_the_linking_grammar_admits_only_the_candidate_codes_or_none(lltok: Any) -> None:
    task = shipped_task("ner-it-clinical")
    link = link_asks(task, NOTE, entities_of("ner-it-clinical"))[0]
    grammar = compile_grammar(link.ask.schema, link.ask.source)
    offered = [c.concept.code for c in link.candidates]
    for code in [*offered, "none"]:
        assert accepts(lltok, grammar, json.dumps({"code": code}, separators=(",", ":")))
    others = sorted(load_terminology(SHIPPED).codes() - {(ICD10CM, c) for c in offered})
    for _system, code in others[:20]:
        assert not accepts(lltok, grammar, json.dumps({"code": code}, separators=(",", ":")))
    assert not accepts(lltok, grammar, '{"code":"J18"}')  # a prefix of a candidate


def test_any_walk_through_the_linking_grammar_ends_on_a_candidate_or_none(lltok: Any) -> None:
    tokenizer = qwen3_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rng = random.Random(18)
    for link in link_asks(shipped_task("ner-it-clinical"), NOTE, entities_of("ner-it-clinical")):
        grammar = compile_grammar(link.ask.schema, link.ask.source)
        max_tokens = worst_case_bytes(link.ask.schema, "") + 1
        for _ in range(10):
            tokens, ended = walk(lltok, grammar, rng, eos, max_tokens)
            assert ended
            code = json.loads(tokenizer.decode(tokens))["code"]
            assert code in {c.concept.code for c in link.candidates} | {"none"}


def first_candidate(request: GenerationRequest) -> str:
    """A linking answer: the first candidate the prompt lists."""
    code = re.search(r"Candidates:\n- (\S+):", prompt_of(request))
    assert code is not None
    return json.dumps({"code": code.group(1)})


def test_entities_of_coded_labels_answer_the_chosen_code(client_for: Any) -> None:
    entities = [("polmonite", "DISORDER"), ("febbre", "SYMPTOM"), ("ramipril", "DRUG")]
    client, engine = client_for(lambda r: ner_output(*entities))
    engine.link = first_candidate
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": NOTE}]})
    assert r.status_code == 200, r.text
    found = {e["text"]: e["codes"] for e in r.json()["documents"][0]["entities"]}
    display = "Polmonite, organismo non specificato"
    assert found["polmonite"] == [{"system": ICD10CM, "code": "J18.9", "display": display, "confidence": 1.0}]
    assert [c["code"] for c in found["febbre"]] == ["R50.9"]
    assert found["ramipril"] == []
    assert len(engine.link_calls) == 2
    assert "Entity: polmonite\nLabel: DISORDER" in prompt_of(engine.link_calls[0])
    metrics = client.get("/metrics").text
    assert 'medlora_entity_links_total{adapter="ner-it-clinical@1",outcome="coded",task="ner-it-clinical"} 2.0' in (
        metrics
    )


def test_an_entity_the_model_does_not_code_answers_no_codes(client_for: Any) -> None:
    client, engine = client_for(lambda r: ner_output(("polmonite", "DISORDER")))  # the fake abstains by default
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": NOTE}]})
    assert r.status_code == 200, r.text
    assert r.json()["documents"][0]["entities"][0]["codes"] == []
    assert len(engine.link_calls) == 1


def test_synthetic_gold_carries_the_planted_codes_and_scores_linking() -> None:
    task = shipped_task("ner-en-clinical")
    rows = task.kind.synthesize(task, world_for("en"), 30, seed=3)
    coded = [e for row in rows for e in row["entities"] if e["label"] in ("DISORDER", "SYMPTOM")]
    assert coded and all("codes" in e for e in coded)
    assert any(e["codes"] for e in coded) and all(
        "codes" not in e for r in rows for e in r["entities"] if e["label"] == "DRUG"
    )
    golds = [task.kind.parse_gold(task, row)[1] for row in rows]
    perfect = [{"entities": [e | {"confidence": None} for e in g["entities"]]} for g in golds]
    abstaining = [{"entities": [e | {"codes": []} for e in g["entities"]]} for g in golds]
    assert task.kind.score(task, golds, perfect)["linking"]["accuracy_at_1"] == 1.0
    scored = task.kind.score(task, golds, abstaining)["linking"]
    assert scored["accuracy_at_1"] == 0.0 and scored["abstention_rate"] == 1.0
    assert scored["false_code_rate"] in (None, 0.0)
    assert 0.9 <= scored["candidate_recall_at_k"] <= 1.0


def test_gold_codes_outside_the_terminology_are_refused() -> None:
    from app.tasks.types.base import BadRecord

    task = shipped_task("ner-it-clinical")
    entity = {"start": 0, "end": 9, "label": "DISORDER", "codes": [{"system": ICD10CM, "code": "Z99.99"}]}
    with pytest.raises(BadRecord, match=r"entities\[0\]\.codes\[0\]\.code: 'Z99.99'"):
        task.kind.parse_gold(task, {"text": "polmonite", "entities": [entity]})


def test_the_shipped_icd10cm_subset_has_the_cdcs_codes_and_descriptions() -> None:
    # simple-icd-10-cm bundles the CDC's ICD-10-CM tables (April 2026 release): every shipped
    # code is a real one, and its English display is the official description.
    import csv

    import simple_icd_10_cm as cm

    path = TASKS_DIR / "terminologies" / "icd10cm-demo.tsv"
    rows = list(csv.DictReader(path.open(encoding="utf-8"), delimiter="\t"))
    english = [row for row in rows if row["language"] == "en"]
    assert len(english) >= 60
    for row in english:
        assert cm.is_valid_item(row["code"]), row["code"]
        assert row["display"].casefold() == cm.get_description(row["code"]).casefold(), row["code"]
    assert {row["code"] for row in rows if row["language"] == "it"} == {row["code"] for row in english}
