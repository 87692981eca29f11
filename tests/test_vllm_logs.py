"""vLLM's own logs never hold a note's text: a grammar that fails is logged by vLLM whole, and
medlora's grammars hold the note's words (found by the e2e log scan, tests/support/logscan.py)."""

from __future__ import annotations

import json
import logging
import logging.config
from typing import Any

from app.engine.vllm_logs import LOGGING_CONFIG, RequestTextFilter

# What vLLM 0.32's guidance backend logged for a note ("... mother with diabetes ... left arm").
LLGUIDANCE_ERROR = (
    "Parser Error: token \"\u00d9\" doesn't satisfy the grammar; forced bytes: got 'U'; applying '\u00c3'\n"
    '</state><grammar>\nstart: obj7\nSPAN0: %regex {"substring_chunks": ["mother", " ", "with", " ", "diabetes"]}'
)


def record(name: str, message: str, *args: Any, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc else None
    return logging.LogRecord(name, logging.WARNING, "backend_guidance.py", 231, message, args, exc_info)


def test_a_failing_grammar_is_logged_by_what_failed_not_by_its_text() -> None:
    logged = record("vllm.v1.structured_output.backend_guidance", "LLMatcher error: %s", LLGUIDANCE_ERROR)
    assert RequestTextFilter().filter(logged)
    message = logging.Formatter().format(logged)
    assert message.startswith("LLMatcher error: Parser Error: token")
    assert "diabetes" not in message and "mother" not in message and "\u00d9" not in message


def test_a_grammar_that_does_not_compile_is_logged_without_its_traceback() -> None:
    logged = record(
        "vllm.v1.structured_output", "Failed to compile grammar for request %s", "r1", exc=ValueError(LLGUIDANCE_ERROR)
    )
    RequestTextFilter().filter(logged)
    message = logging.Formatter().format(logged)
    assert "Failed to compile grammar for request r1" in message and "diabetes" not in message


def test_other_vllm_records_pass_as_they_are() -> None:
    logged = record("vllm.v1.engine.core", "Added request %s", "medlora-1")
    assert RequestTextFilter().filter(logged) and logged.getMessage() == "Added request medlora-1"


def test_the_shipped_logging_config_loads_with_the_filter_on_vllms_handler() -> None:
    config = json.loads(LOGGING_CONFIG.read_text(encoding="utf-8"))
    assert config["handlers"]["vllm"]["filters"] == ["no_request_text"]
    logging.config.dictConfig(config)
    handler = logging.getLogger("vllm").handlers[0]
    assert any(isinstance(f, RequestTextFilter) for f in handler.filters)
