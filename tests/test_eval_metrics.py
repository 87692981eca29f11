from __future__ import annotations

import json
from typing import Any

import pytest

from app.tasks.entities import ner_scores
from app.tasks.scoring import PRF, markdown_table
from app.tasks.types.classification import classification_scores
from app.tasks.types.qa import normalize_answer, qa_scores


def ent(start: int, end: int, label: str, **extra: Any) -> dict[str, Any]:
    return {"start": start, "end": end, "label": label, **extra}


def assert_prf(score: PRF, precision: float, recall: float, f1: float, tp: int, fp: int, fn: int) -> None:
    assert (score.tp, score.fp, score.fn) == (tp, fp, fn)
    assert score.precision == pytest.approx(precision)
    assert score.recall == pytest.approx(recall)
    assert score.f1 == pytest.approx(f1)


# --------------------------------------------------------------------------------------------- NER


def test_ner_empty_predictions_score_zero_with_every_gold_a_miss() -> None:
    scores = ner_scores([[ent(0, 5, "PROBLEM"), ent(10, 20, "DRUG")]], [[]])
    assert_prf(scores.strict, 0.0, 0.0, 0.0, tp=0, fp=0, fn=2)
    assert_prf(scores.lenient, 0.0, 0.0, 0.0, tp=0, fp=0, fn=2)
    assert set(scores.per_label_strict) == {"PROBLEM", "DRUG"}
    assert_prf(scores.per_label_strict["DRUG"], 0.0, 0.0, 0.0, tp=0, fp=0, fn=1)


def test_ner_empty_gold_scores_zero_with_every_prediction_a_false_positive() -> None:
    scores = ner_scores([[]], [[ent(0, 5, "PROBLEM")]])
    assert_prf(scores.strict, 0.0, 0.0, 0.0, tp=0, fp=1, fn=0)
    assert_prf(scores.lenient, 0.0, 0.0, 0.0, tp=0, fp=1, fn=0)
    assert_prf(scores.per_label_lenient["PROBLEM"], 0.0, 0.0, 0.0, tp=0, fp=1, fn=0)


def test_ner_both_empty_is_a_perfect_score() -> None:
    no_entities: list[list[dict[str, Any]]] = [[], []]
    for gold, pred in ((no_entities, no_entities), ([], [])):
        scores = ner_scores(gold, pred)
        assert_prf(scores.strict, 1.0, 1.0, 1.0, tp=0, fp=0, fn=0)
        assert_prf(scores.lenient, 1.0, 1.0, 1.0, tp=0, fp=0, fn=0)
        assert scores.per_label_strict == {} and scores.per_label_lenient == {}


def test_ner_duplicate_predicted_spans_count_once() -> None:
    gold = [[ent(0, 5, "PROBLEM")]]
    pred = [[ent(0, 5, "PROBLEM"), ent(0, 5, "PROBLEM", text="febbre"), ent(20, 25, "PROBLEM")]]
    scores = ner_scores(gold, pred)
    # The two (0, 5, PROBLEM) collapse: 1 TP, and only the (20, 25) span is an FP.
    assert_prf(scores.strict, 0.5, 1.0, 2 / 3, tp=1, fp=1, fn=0)
    assert_prf(scores.lenient, 0.5, 1.0, 2 / 3, tp=1, fp=1, fn=0)


def test_ner_duplicate_gold_spans_count_once() -> None:
    scores = ner_scores([[ent(0, 5, "PROBLEM"), ent(0, 5, "PROBLEM")]], [[ent(0, 5, "PROBLEM")]])
    assert_prf(scores.strict, 1.0, 1.0, 1.0, tp=1, fp=0, fn=0)


def test_ner_two_predictions_overlapping_one_gold_are_one_tp_and_one_fp_when_lenient() -> None:
    scores = ner_scores([[ent(0, 10, "PROBLEM")]], [[ent(0, 4, "PROBLEM"), ent(5, 10, "PROBLEM")]])
    assert_prf(scores.strict, 0.0, 0.0, 0.0, tp=0, fp=2, fn=1)
    # P = 1/2, R = 1/1, F1 = 2 * 0.5 * 1 / 1.5 = 2/3.
    assert_prf(scores.lenient, 0.5, 1.0, 2 / 3, tp=1, fp=1, fn=0)


def test_ner_one_prediction_overlapping_two_golds_is_one_tp_and_one_fn_when_lenient() -> None:
    scores = ner_scores([[ent(0, 5, "PROBLEM"), ent(6, 10, "PROBLEM")]], [[ent(0, 10, "PROBLEM")]])
    assert_prf(scores.lenient, 1.0, 0.5, 2 / 3, tp=1, fp=0, fn=1)


def test_ner_lenient_matching_is_maximal_whatever_the_listing_order() -> None:
    # Gold A = [0, 10), B = [2, 4); pred P1 = [3, 12) overlaps both, P2 = [8, 9) overlaps only A.
    # Taking A for P1 (first by start) would strand P2; the maximum matching is P1-B, P2-A.
    gold = [ent(0, 10, "PROBLEM"), ent(2, 4, "PROBLEM")]
    pred = [ent(3, 12, "PROBLEM"), ent(8, 9, "PROBLEM")]
    for g, p in ((gold, pred), (gold[::-1], pred[::-1])):
        assert_prf(ner_scores([g], [p]).lenient, 1.0, 1.0, 1.0, tp=2, fp=0, fn=0)


def test_ner_adjacent_spans_do_not_overlap_because_end_is_exclusive() -> None:
    scores = ner_scores([[ent(0, 5, "PROBLEM")]], [[ent(5, 10, "PROBLEM")]])
    assert_prf(scores.lenient, 0.0, 0.0, 0.0, tp=0, fp=1, fn=1)


def test_ner_wrong_label_with_exact_offsets_is_a_false_positive_and_a_false_negative() -> None:
    scores = ner_scores([[ent(0, 5, "PROBLEM")]], [[ent(0, 5, "DRUG")]])
    assert_prf(scores.strict, 0.0, 0.0, 0.0, tp=0, fp=1, fn=1)
    assert_prf(scores.lenient, 0.0, 0.0, 0.0, tp=0, fp=1, fn=1)
    for per_label in (scores.per_label_strict, scores.per_label_lenient):
        assert_prf(per_label["PROBLEM"], 0.0, 0.0, 0.0, tp=0, fp=0, fn=1)
        assert_prf(per_label["DRUG"], 0.0, 0.0, 0.0, tp=0, fp=1, fn=0)


def test_ner_per_label_and_micro_scores_over_several_documents() -> None:
    gold = [
        [ent(0, 5, "PROBLEM"), ent(10, 15, "PROBLEM"), ent(20, 30, "DRUG")],
        [ent(0, 8, "DRUG")],
    ]
    pred = [
        [
            ent(0, 5, "PROBLEM", text="tosse", attributes={"negated": False}),  # exact
            ent(11, 15, "PROBLEM"),  # overlaps (10, 15): lenient only
            ent(20, 30, "DRUG"),  # exact
            ent(40, 45, "DRUG"),  # spurious
        ],
        [ent(3, 6, "PROBLEM")],  # spurious label; (0, 8) DRUG missed
    ]
    scores = ner_scores(gold, pred)

    # Strict PROBLEM: tp 1, fp 2, fn 1 -> P 1/3, R 1/2, F1 = 2*(1/6)/(5/6) = 0.4.
    assert_prf(scores.per_label_strict["PROBLEM"], 1 / 3, 0.5, 0.4, tp=1, fp=2, fn=1)
    assert_prf(scores.per_label_strict["DRUG"], 0.5, 0.5, 0.5, tp=1, fp=1, fn=1)
    # Strict micro: tp 2, fp 3, fn 2 -> P 0.4, R 0.5, F1 = 2*0.2/0.9 = 4/9.
    assert_prf(scores.strict, 0.4, 0.5, 4 / 9, tp=2, fp=3, fn=2)

    # Lenient PROBLEM: tp 2, fp 1, fn 0 -> P 2/3, R 1, F1 = 0.8.
    assert_prf(scores.per_label_lenient["PROBLEM"], 2 / 3, 1.0, 0.8, tp=2, fp=1, fn=0)
    assert_prf(scores.per_label_lenient["DRUG"], 0.5, 0.5, 0.5, tp=1, fp=1, fn=1)
    # Lenient micro: tp 3, fp 2, fn 1 -> P 0.6, R 0.75, F1 = 2*0.45/1.35 = 2/3.
    assert_prf(scores.lenient, 0.6, 0.75, 2 / 3, tp=3, fp=2, fn=1)


def test_ner_to_dict_is_json_and_rounded_to_four_decimals() -> None:
    scores = ner_scores([[ent(0, 5, "PROBLEM")]], [[ent(0, 5, "PROBLEM"), ent(6, 9, "PROBLEM"), ent(10, 12, "DRUG")]])
    report = json.loads(json.dumps(scores.to_dict()))
    assert report["strict"] == {"precision": 0.3333, "recall": 1.0, "f1": 0.5, "tp": 1, "fp": 2, "fn": 0}
    assert report["per_label_strict"]["PROBLEM"]["precision"] == 0.5
    assert set(report) == {"strict", "lenient", "per_label_strict", "per_label_lenient"}


def test_ner_mismatched_document_counts_raise() -> None:
    with pytest.raises(ValueError, match="parallel"):
        ner_scores([[], []], [[]])


@pytest.mark.parametrize(
    "entity",
    [{"start": 0, "label": "P"}, {"start": "0", "end": 5, "label": "P"}, {"start": 5, "end": 2, "label": "P"}],
)
def test_ner_malformed_entities_raise(entity: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ner_scores([[entity]], [[]])


# ---------------------------------------------------------------------------------------------- QA


def test_qa_none_matches_only_none() -> None:
    gold = [None, None, {"text": "febbre"}, {"text": "tosse"}]
    pred = [None, {"text": "febbre"}, None, {"text": "la tosse", "start": 3, "end": 11}]
    scores = qa_scores(gold, pred)
    # Per item EM = F1: [1, 0, 0, 1].
    assert scores.n == 4
    assert scores.exact_match == pytest.approx(0.5)
    assert scores.token_f1 == pytest.approx(0.5)
    assert scores.n_has_answer == 2 and scores.n_no_answer == 2
    assert scores.has_answer_em == pytest.approx(0.5)
    assert scores.has_answer_f1 == pytest.approx(0.5)
    assert scores.no_answer_accuracy == pytest.approx(0.5)


def test_qa_breakdowns_are_none_when_their_split_is_empty() -> None:
    answered = qa_scores([{"text": "febbre"}], [{"text": "febbre"}])
    assert answered.no_answer_accuracy is None and answered.has_answer_em == 1.0
    unanswerable = qa_scores([None], [{"text": "febbre"}])
    assert unanswerable.has_answer_em is None and unanswerable.has_answer_f1 is None
    assert unanswerable.no_answer_accuracy == 0.0
    assert unanswerable.to_dict()["has_answer_em"] is None


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("L’asma bronchiale", "asma bronchiale"),
        ("«La febbre»", "febbre"),
        ("Gli esami, il referto e lo stato.", "esami referto e stato"),
        ("un'ora, uno stent, una dose, i farmaci, le vene", "ora stent dose farmaci vene"),
        ("The patient has a fever", "patient has fever"),
        ("dell'ospedale", "dellospedale"),  # articulated preposition, not an article
        ("  amoxicillina\t1   g  ", "amoxicillina 1 g"),
        ("caffe\u0300", "caff\u00e8"),  # decomposed and precomposed è compare equal
    ],
)
def test_normalize_answer_strips_italian_and_english_articles_and_unicode_punctuation(
    raw: str, normalised: str
) -> None:
    assert normalize_answer(raw) == normalised


def test_qa_exact_match_ignores_italian_articles_and_guillemets() -> None:
    scores = qa_scores(
        [{"text": "amoxicillina"}, {"text": "l'asma"}], [{"text": "«L’amoxicillina»"}, {"text": "asma."}]
    )
    assert scores.exact_match == 1.0 and scores.token_f1 == 1.0


def test_qa_token_f1_partial_overlap() -> None:
    # Gold tokens: amoxicillina 1 g tre volte al giorno (7); pred: amoxicillina 1 g (3); common 3.
    # P = 3/3 = 1, R = 3/7, F1 = 2 * (3/7) / (10/7) = 6/10 = 0.6.
    scores = qa_scores([{"text": "amoxicillina 1 g tre volte al giorno"}], [{"text": "amoxicillina 1 g"}])
    assert scores.exact_match == 0.0
    assert scores.token_f1 == pytest.approx(0.6)


def test_qa_token_f1_counts_repeated_tokens_as_a_multiset() -> None:
    # Gold {dolore: 2, toracico: 1}, pred {dolore: 1, toracico: 2}: common = 1 + 1 = 2.
    # P = 2/3, R = 2/3, F1 = 2/3 (a set overlap would wrongly give 1.0).
    scores = qa_scores([{"text": "dolore dolore toracico"}], [{"text": "dolore toracico toracico"}])
    assert scores.token_f1 == pytest.approx(2 / 3)


def test_qa_answers_that_normalise_to_nothing_match_only_each_other() -> None:
    scores = qa_scores([{"text": "the"}, {"text": "la"}], [{"text": "il"}, {"text": "febbre"}])
    # Item 1: both empty after normalisation -> 1; item 2: one empty -> 0.
    assert scores.exact_match == pytest.approx(0.5)
    assert scores.token_f1 == pytest.approx(0.5)


def test_qa_no_items_gives_vacuous_zero_means() -> None:
    scores = qa_scores([], [])
    assert (scores.n, scores.exact_match, scores.token_f1) == (0, 0.0, 0.0)
    assert scores.has_answer_em is None and scores.no_answer_accuracy is None


def test_qa_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="parallel"):
        qa_scores([None], [])


# ---------------------------------------------------------------------------------- classification

CLS_GOLD = [["A", "B"], ["A"], ["C"], []]
CLS_PRED = [["A"], ["A", "C"], ["C"], []]


def test_classification_macro_and_micro_f1_differ_on_multi_label_documents() -> None:
    scores = classification_scores(CLS_GOLD, CLS_PRED)
    # Exact set match: docs 3 and 4 only -> 2/4.
    assert scores.n == 4
    assert scores.accuracy == pytest.approx(0.5)
    assert list(scores.per_label) == ["A", "B", "C"]
    assert_prf(scores.per_label["A"], 1.0, 1.0, 1.0, tp=2, fp=0, fn=0)
    assert_prf(scores.per_label["B"], 0.0, 0.0, 0.0, tp=0, fp=0, fn=1)
    assert_prf(scores.per_label["C"], 0.5, 1.0, 2 / 3, tp=1, fp=1, fn=0)
    # Macro: (1 + 0 + 2/3) / 3 = 5/9. Micro: tp 3, fp 1, fn 1 -> P = R = F1 = 0.75.
    assert scores.macro_f1 == pytest.approx(5 / 9)
    assert scores.micro_f1 == pytest.approx(0.75)


def test_classification_given_labels_fix_the_label_set_and_order() -> None:
    scores = classification_scores(CLS_GOLD, CLS_PRED, labels=["D", "C", "B", "A"])
    assert list(scores.per_label) == ["D", "C", "B", "A"]
    # D never occurs on either side: listed with F1 1.0, but not part of the macro mean.
    assert_prf(scores.per_label["D"], 1.0, 1.0, 1.0, tp=0, fp=0, fn=0)
    # Macro over labels seen on either side only (D is left out): (1 + 2/3 + 0) / 3 = 5/9.
    assert scores.macro_f1 == pytest.approx(5 / 9)
    assert scores.micro_f1 == pytest.approx(0.75)


def test_classification_labels_outside_the_given_set_still_count_for_accuracy() -> None:
    scores = classification_scores(CLS_GOLD, CLS_PRED, labels=["A"])
    assert scores.macro_f1 == 1.0 and scores.micro_f1 == 1.0
    assert scores.accuracy == pytest.approx(0.5)


def test_classification_duplicate_labels_in_a_document_are_one_decision() -> None:
    scores = classification_scores([["A"]], [["A", "A"]])
    assert scores.accuracy == 1.0
    assert_prf(scores.per_label["A"], 1.0, 1.0, 1.0, tp=1, fp=0, fn=0)


def test_classification_all_documents_empty_on_both_sides_is_perfect() -> None:
    scores = classification_scores([[], []], [[], []])
    assert (scores.accuracy, scores.macro_f1, scores.micro_f1) == (1.0, 1.0, 1.0)
    assert scores.per_label == {}


def test_classification_to_dict_is_json_and_rounded() -> None:
    report = json.loads(json.dumps(classification_scores(CLS_GOLD, CLS_PRED).to_dict()))
    assert report["macro_f1"] == 0.5556
    assert report["per_label"]["C"]["f1"] == 0.6667


def test_classification_rejects_mismatched_lengths_and_an_empty_label_list() -> None:
    with pytest.raises(ValueError, match="parallel"):
        classification_scores([["A"]], [])
    with pytest.raises(ValueError, match="labels"):
        classification_scores([["A"]], [["A"]], labels=[])


# ------------------------------------------------------------------------------------------ report


def test_markdown_table_puts_runs_side_by_side_with_dashes_for_missing_metrics() -> None:
    table = markdown_table({"base": {"f1": 0.5, "em": 0.25}, "lora": {"f1": 2 / 3, "recall": 1.0, "em": None}})
    assert table == (
        "| metric | base | lora |\n"
        "|---|---:|---:|\n"
        "| f1 | 0.500 | 0.667 |\n"
        "| em | 0.250 | – |\n"
        "| recall | – | 1.000 |\n"
    )


def test_markdown_table_escapes_pipes_in_names() -> None:
    assert markdown_table({"a|b": {"x|y": 1.0}}).splitlines()[0] == "| metric | a\\|b |"
    assert markdown_table({"a|b": {"x|y": 1.0}}).splitlines()[2] == "| x\\|y | 1.000 |"


# --------------------------------------------------------------------------------------- relations


def rel(kind: str, head: dict[str, Any], tail: dict[str, Any], confidence: float | None = None) -> dict[str, Any]:
    return {"type": kind, "head": head, "tail": tail, "confidence": confidence}


def test_relation_scores_strict_needs_both_spans_labels_and_type_lenient_overlapping_spans() -> None:
    from app.tasks.types.relations import relation_scores

    drug, dose, route = ent(0, 12, "DRUG"), ent(13, 16, "DOSAGE"), ent(17, 23, "ROUTE")
    gold = [
        [rel("dosage", drug, dose), rel("route", drug, route)],
        [rel("dosage", ent(5, 10, "DRUG"), ent(11, 15, "DOSAGE"))],
    ]
    pred = [
        [
            rel("dosage", drug, dose),  # exact: strict and lenient
            rel("route", drug, ent(17, 20, "ROUTE")),  # tail cut short: lenient only
            rel("route", drug, dose),  # a pair gold does not have: wrong in both
        ],
        [rel("dosage", ent(5, 10, "DRUG"), ent(11, 15, "ROUTE"))],  # tail label wrong: wrong in both
    ]
    scores = relation_scores(gold, pred)
    # strict: tp 1, fp 3, fn 2 -> P 0.25, R 1/3, F1 2PR/(P+R) = 0.2857
    assert scores["strict"] == {"precision": 0.25, "recall": 0.3333, "f1": 0.2857, "tp": 1, "fp": 3, "fn": 2}
    # lenient: the cut-short route also counts -> tp 2, fp 2, fn 1 -> P 0.5, R 2/3, F1 0.5714
    assert scores["lenient"] == {"precision": 0.5, "recall": 0.6667, "f1": 0.5714, "tp": 2, "fp": 2, "fn": 1}
    # per type (strict): dosage tp 1 fp 1 fn 1 -> 0.5; route tp 0 -> 0.0
    assert scores["per_type_strict_f1"] == {"dosage": 0.5, "route": 0.0}


# ------------------------------------------------------------------------------------------- forms


def test_form_slot_scores_count_a_wrong_guess_as_worse_than_unknown() -> None:
    from app.tasks.spec import FormItemSpec
    from app.tasks.types.form import form_scores

    items = [
        FormItemSpec(name="spo2", kind="integer", min=50, max=100, tolerance=1),
        FormItemSpec(name="xray", kind="choice", multiple=True, options=["a", "b", "c"]),
        FormItemSpec(name="fever", kind="boolean"),
        FormItemSpec(name="diagnosis", kind="text"),
    ]

    def filled(value: Any, start: int, end: int, confidence: float | None = None) -> dict[str, Any]:
        return {"value": value, "evidence": [{"start": start, "end": end}], "confidence": confidence}

    gold = [
        {"spo2": filled(88, 0, 8), "xray": filled(["a", "b"], 10, 20), "diagnosis": filled("Scompenso  acuto", 30, 45)},
        {"fever": filled(True, 0, 6)},
    ]
    pred = [
        {
            "spo2": filled(89, 2, 8, 0.9),  # within the tolerance of 1, evidence overlapping: right
            "xray": filled(["b", "a"], 50, 60, 0.8),  # same options in another order: right, evidence elsewhere
            "fever": filled(False, 0, 5, 0.7),  # gold unknown: a false positive
            "diagnosis": filled("scompenso acuto", 30, 45, 0.6),  # case and spacing aside: right
        },
        {"spo2": filled(60, 0, 3, 0.2)},  # gold unknown spo2 guessed, gold fever missed
    ]
    scores = form_scores(items, gold, pred)
    # tp 3 (spo2, xray, diagnosis); fp 2 (fever in doc 1, spo2 in doc 2); fn 1 (fever in doc 2)
    assert scores["slots"] == {"precision": 0.6, "recall": 0.75, "f1": 0.6667, "tp": 3, "fp": 2, "fn": 1}
    # right per (document, item): doc 1 spo2, xray, diagnosis (fever wrong); doc 2 xray, diagnosis unknown
    # and unknown (spo2 and fever wrong) -> spo2 1/2, xray 2/2, fever 0/2, diagnosis 2/2
    assert scores["per_item_accuracy"] == {"spo2": 0.5, "xray": 1.0, "fever": 0.0, "diagnosis": 1.0}
    assert scores["accuracy"] == 0.625
    assert scores["evidence_overlap"] == round(2 / 3, 4)  # spo2 and diagnosis overlap, xray does not
    # gold unknown: doc 1 fever (guessed), doc 2 spo2 (guessed), xray, diagnosis (left unknown) -> 2/4
    assert scores["unknown_accuracy"] == 0.5
    assert scores["calibration"]["n"] == 5

    # The same guesses left unknown: the false positives go, recall stays.
    cautious = [{k: v for k, v in pred[0].items() if k != "fever"}, {}]
    assert form_scores(items, gold, cautious)["slots"]["f1"] > scores["slots"]["f1"]
