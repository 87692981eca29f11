"""Hypothesis strategies for clinical-looking text with every awkward character class."""

from __future__ import annotations

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
