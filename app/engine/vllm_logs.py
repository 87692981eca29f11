"""vLLM's own logs, kept free of clinical text.

vLLM's structured-output backends log a grammar that fails whole (llguidance's error report
holds the grammar, and medlora's grammars draw grounded spans from the note's text), and a
grammar that fails to compile with its traceback. vLLM's processes (the in-process engine's
core, or the engine pods of the split topology) load `vllm_logging.json` through
VLLM_LOGGING_CONFIG_PATH: vLLM's own format, with this filter on its handler, so that such a
record says what failed and for which request, never the text.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

LOGGING_CONFIG = Path(__file__).with_name("vllm_logging.json")
LOGGING_CONFIG_ENV = "VLLM_LOGGING_CONFIG_PATH"

# The loggers whose records can carry a request's grammar (and so its text).
_GRAMMAR_LOGGERS = ("vllm.v1.structured_output",)
# A first line keeps what failed; from the first quote on, llguidance quotes the text's tokens.
_QUOTED = re.compile(r"[\"'<`]")


class RequestTextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_GRAMMAR_LOGGERS):
            first_line = record.getMessage().split("\n", 1)[0]
            kept = _QUOTED.split(first_line, maxsplit=1)[0].rstrip(" :;,")
            record.msg, record.args = f"{kept} [request text withheld]", ()
            # The exception's message and traceback can quote the grammar too.
            record.exc_info, record.exc_text = None, None
        return True
