"""Hypothesis strategies for clinical-looking text with every awkward character class."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WORDS = [
    "paziente",
    "febbre",
    "tosse",
    "dolore",
    "toracico",
    "amoxicillina",
    "1",
    "g",
    "per",
    "os",
    "caffè",
    "perché",
    "più",
    "ù",
    "NaCl",
    "0,9%",
    "mg/die",
    "PA",
    "120/80",
    "chest",
    "pain",
    "denies",
    "São",
]
AWKWARD = ['"', "\\", "\t", "\r\n", "\n", "\n\n", "🙂", "👩‍⚕️", "«", "»", "’", " ", "  ", ".", ",", ";", "(", ")"]
AWKWARD += ["\u00a0", "\u2028", "\x00", "\x1f"]

clinical_text = st.lists(st.one_of(st.sampled_from(WORDS), st.sampled_from(AWKWARD)), max_size=80).map(
    lambda parts: " ".join(parts)
)
any_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300)
texts = st.one_of(clinical_text, any_text)


def check_generated_batches(check: Callable[[list[str]], None], *, examples: int, max_size: int) -> None:
    """Run `check` on `examples` lists of 1 to `max_size` generated texts, the same ones every
    run (an end-to-end server is slow: few examples, no deadline)."""

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(texts, min_size=1, max_size=max_size))
    def run(batch: list[str]) -> None:
        check(batch)

    run()
