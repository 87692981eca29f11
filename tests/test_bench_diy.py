"""The do-it-yourself baseline's own logic (bench/diy_baseline.py): the schema outlines is given,
token counting, figures, the checks its answers get, and the transformers + peft + outlines
side itself on the shipped demo (offline, the prompt medlora sends)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from outlines_core.json_schema import build_regex_from_schema

from app.settings import DEMO_DIR
from bench.diy_baseline import (
    Checked,
    Diy,
    decoded_tokens,
    median_figures,
    ordered_subsets,
    outlines_schema,
    workloads,
)

FLAGS = ["negated", "uncertain", "historical", "family"]
ENTITY: dict[str, Any] = {
    "type": "array",
    "prefixItems": [
        {"type": "string", "minLength": 1, "maxLength": 20, "x-medlora-grounded": True},
        {"enum": ["DRUG", "TEST"]},
    ],
    "items": {"enum": FLAGS},
    "minItems": 2,
    "maxItems": 4,
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"entities": {"type": "array", "maxItems": 3, "items": ENTITY}},
    "required": ["entities"],
    "additionalProperties": False,
}


def matches(schema: dict[str, Any], value: Any) -> bool:
    regex = build_regex_from_schema(json.dumps(outlines_schema(schema)), "")
    return re.fullmatch(regex, json.dumps(value, separators=(",", ":"))) is not None


def test_ordered_subsets_keep_the_declared_order_up_to_the_room_left() -> None:
    assert ordered_subsets(["a", "b", "c"], 2) == [[], ["a"], ["b"], ["c"], ["a", "b"], ["a", "c"], ["b", "c"]]
    assert ordered_subsets(["a"], 5) == [[], ["a"]]


def test_outlines_schema_drops_medlora_keywords() -> None:
    assert "x-medlora-grounded" not in json.dumps(outlines_schema(SCHEMA))


def test_outlines_is_given_the_flag_tails_medlora_admits() -> None:
    # outlines' own regex builder reduces a tuple with a tail to its prefix: flags would be
    # impossible, which is why the schema spells them out.
    plain = build_regex_from_schema(json.dumps(SCHEMA), "")
    assert re.fullmatch(plain, '{"entities":[["x","DRUG","negated"]]}') is None
    assert matches(SCHEMA, {"entities": [["x", "DRUG"], ["y", "TEST", "negated", "family"]]})
    assert matches(SCHEMA, {"entities": [["x", "DRUG", "historical"]]})


@pytest.mark.parametrize(
    "entity",
    [["x", "DRUG", "family", "negated"], ["x", "DRUG", "negated", "negated"], ["x", "DRUG", "a", "b", "c"]],
    ids=["out of order", "twice", "too many"],
)
def test_outlines_is_not_given_flag_tails_medlora_refuses(entity: list[str]) -> None:
    assert not matches(SCHEMA, {"entities": [entity]})


def test_decoded_tokens_stop_at_the_first_stop_token_and_count_it() -> None:
    assert decoded_tokens([5, 6, 2, 0, 0], {2, 0}) == 3
    assert decoded_tokens([5, 6, 7], {2}) == 3
    assert decoded_tokens([], {2}) == 0


def test_median_figures_take_the_median_run() -> None:
    figures = median_figures([(4.0, 100), (2.0, 80), (8.0, 120)], notes=8)
    assert figures == {"seconds": 4.0, "notes_per_s": 2.0, "decoded_tokens": 100, "tokens_per_s": 25.0}


def test_checked_counts_what_medlora_would_refuse_or_drop() -> None:
    work = workloads(1)["ner-it-clinical"]
    task, ask = work.task, work.asks[0][0]
    word = ask.source.split()[0]
    checked = Checked()
    checked.add(task, ask, '{"entities":[')
    checked.add(task, ask, '{"entities":[["x","NOT_A_LABEL"]]}')
    checked.add(task, ask, json.dumps({"entities": [[word, "TEST"], ["not in this note at all", "DRUG"]]}))
    assert vars(checked) == {"answers": 3, "unparsable": 1, "schema_invalid": 1, "spans": 2, "spans_not_in_note": 1}


def test_the_diy_side_answers_the_demo_offline_with_medlora_prompt_and_schema() -> None:
    work = {"re-it-medication": workloads(1)["re-it-medication"]}
    diy = Diy(DEMO_DIR, work)
    diy.check_prompts(work["re-it-medication"])  # raises if the prompt differs from medlora's
    checked = Checked()
    _, tokens = diy.run(work["re-it-medication"], "batched", checked)
    assert tokens > 0
    assert checked.answers == 1
    assert checked.unparsable == 0  # what outlines does guarantee
