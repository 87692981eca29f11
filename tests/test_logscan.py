"""The e2e log scan (tests/support/logscan.py) must catch note text and let the schema's own
identifiers through: a false alarm fails CI as surely as a leak."""

from tests.support.logscan import Sent, leaks


def sent_span(span: str) -> Sent:
    sent = Sent()
    sent.spans.add(span)
    return sent


def test_an_answered_span_written_in_a_log_is_caught() -> None:
    assert leaks('{"event": "request", "detail": "denies chest pain"}', sent_span("chest pain")) == ["chest pain"]


def test_a_form_item_name_used_as_an_adapter_name_is_not_a_leak() -> None:
    # schemathesis builds adapter names from the schema's item names (crf-it-dyspnea's `chest_pain`)
    log = '{"event": "admin action", "action": "register", "adapter": "chest_pain@1"}'
    assert leaks(log, sent_span("chest pain")) == []


def test_a_sent_note_trigram_in_a_log_is_caught() -> None:
    sent = Sent()
    sent.record_body({"documents": [{"text": "Paziente con dispnea da sforzo e tosse secca."}]})
    assert leaks("prompt: con dispnea da sforzo", sent) == ["con dispnea sforzo"]
