"""Hypothesis strategies for clinical-looking notes with every feature that has broken text
pipelines: CRLF and lone CR (and the other line breaks Unicode knows), NFD text and stray
combining marks, emoji and astral-plane characters, zero-width characters and BOMs, quotes,
backslashes and JSON-hostile characters, numbers in every notation, notes near and past a
task's chunk size, and repeated substrings.

A note is drawn as a few sentences of clinical words, numbers and awkward pieces, then
transformed: normalised (NFD, NFC or partly), sprinkled with combining marks and zero-width
characters, a sentence repeated, and lengthened (by repetition, so that a long note stays a
handful of draws) to a target length that is often just under, at or past `chunk_chars`, and
cut there whatever it cuts (a CRLF, a base letter from its accent, an emoji sequence).

`volume_documents` draws them for the volume tests (tests/test_grammar_volume.py,
tests/e2e/test_live_volume.py).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import shipped_task
from tests.strategies import WORDS

IT_WORDS = [
    *WORDS,
    "Accesso",
    "del",
    "Donna",
    "di",
    "79",
    "anni",
    "dispnea",
    "ingravescente",
    "da",
    "giorni",
    "ortopnea",
    "edemi",
    "declivi",
    "Nega",
    "SpO2",
    "in aria ambiente",
    "FR",
    "atti/min",
    "FC",
    "bpm",
    "mmHg",
    "TC",
    "°C",
    "EGA",
    "pH",
    "NT-proBNP",
    "pg/mL",
    "Rx torace",
    "congestione polmonare",
    "versamento pleurico",
    "ossigenoterapia",
    "maschera di Venturi",
    "occhialini nasali",
    "L/min",
    "furosemide",
    "ev",
    "enoxaparina",
    "4000 UI",
    "sc",
    "una volta al giorno",
    "pantoprazolo",
    "40 mg",
    "la mattina",
    "ogni 8 ore",
    "per 7 giorni",
    "scompenso cardiaco acuto",
    "BPCO",
    "Ricovero",
    "Medicina",
    "dimissione",
    "Terapia:",
    "Diagnosi:",
    "Anamnesi:",
    "ipertensione arteriosa",
    "madre con diabete mellito",
    "nessuna",
    "è",
    "già",
    "età",
    "Müller",
    "naïve",
    "Ångström",
    "façade",
]
EN_WORDS = [
    "Discharge",
    "medications:",
    "aspirin",
    "81 mg",
    "PO",
    "daily",
    "metoprolol",
    "25 mg",
    "by mouth",
    "twice daily",
    "for 30 days",
    "chest pain",
    "radiating",
    "to the left arm",
    "Denies",
    "fever",
    "Troponin",
    "ng/mL",
    "ECG",
    "without ST elevation",
    "shortness of breath",
    "history of",
    "COPD",
    "heart failure",
    "BP",
    "HR",
    "O2 sat",
    "on room air",
    "IV",
    "q8h",
    "PRN",
    "mother with diabetes",
]
LINE_BREAKS = ["\n", "\r\n", "\r", "\n\n", "\r\n\r\n", "\r\r", "\n\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c"]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\u00a0", "\u202f", "\u3000", "", " \r\n ", ", ", "; ", ". "]
COMBINING = ["\u0300", "\u0301", "\u0302", "\u0308", "\u0327", "\u0323", "\u0361", "\u20dd", "\u034f", "\ufe0f"]
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u200e", "\u200f", "\u180e"]
EMOJI_ASTRAL = [
    "🙂",
    "👩‍⚕️",
    "👍🏽",
    "🇮🇹",
    "1️⃣",
    "🫁",
    "💊",
    "🩺",
    "𝔸𝔹ℂ",
    "𝟙𝟚𝟛",
    "𠀀𠀁",
    "𓂀",
    "\U0010fffd",
    "\U000e0041",
    "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
]
JSON_HOSTILE = [
    '"',
    '""',
    "'",
    "«",
    "»",
    "“",
    "”",
    "„",
    "‘",
    "’",
    "`",
    "\\",
    "\\\\",
    '\\"',
    "\\n",
    "\\u0000",
    "\\ud83d",
    "/",
    "</script>",
    "{",
    "}",
    "[",
    "]",
    '{"entities": [["x", "DRUG"]]}',
    "\x00",
    "\x01",
    "\x08",
    "\x1b",
    "\x1f",
    "\x7f",
    "\t",
    "\ufffd",
    "<|im_end|>",
    "<|endoftext|>",
    "<think>",
    "\u202e",
]
NUMBER_LITERALS = [
    "1,5",
    "1.5",
    "1e3",
    "1E-3",
    "-0",
    "+0",
    "-0.0",
    "0007",
    "007.50",
    ".5",
    "5.",
    "½",
    "¾",
    "⅓",
    "１２３",
    "３８,５",
    "١٢٣",
    "٣٨٫٥",
    "۱۲۳",
    "०१२",
    "²",
    "10³",
    "1'000",
    "1\u00a0000",
    "1\u202f000",
    "1.000,5",
    "1,000.5",
    "0x1F",
    "38,5°C",
    "120/80",
    "∞",
    "NaN",
    "\u22123",
    "3-4",
    "1/2",
    "12/03/2024",
    "2024-03-12",
    "3.2.25",
    "29/02/2023",
    "1e308",
    "1e-400",
    "99999999999999999999",
    "-273.15",
    "36,6 °C",
    "86%",
    "SpO2 86%",
    "Ⅻ",
]
_FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
_ARABIC_INDIC = str.maketrans("0123456789.,", "٠١٢٣٤٥٦٧٨٩٫٬")


def _notations(value: float) -> list[str]:
    """`value` written every way a note might write it."""
    plain = f"{value:g}"
    fixed = f"{value:.2f}"
    return [
        plain,
        fixed,
        fixed.replace(".", ","),
        f"{value:e}",
        f"{value:.1E}",
        f"000{abs(value):.1f}",
        f"{value:+.1f}",
        plain.translate(_FULLWIDTH),
        fixed.translate(_ARABIC_INDIC),
        f"{value:,.3f}",
        f"{value:_.1f}",
    ]


numbers = st.one_of(
    st.sampled_from(NUMBER_LITERALS),
    st.builds(
        lambda value, k: _notations(value)[k],
        st.one_of(
            st.integers(-1000, 100_000).map(float),
            st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
            st.sampled_from([0.0, -0.0, 0.5, 36.6, 38.5, 7.36, 1e-5, 1e21]),
        ),
        st.integers(0, 10),
    ),
)
awkward = st.one_of(
    st.sampled_from(LINE_BREAKS),
    st.sampled_from(COMBINING),
    st.sampled_from(ZERO_WIDTH),
    st.sampled_from(EMOJI_ASTRAL),
    st.sampled_from(JSON_HOSTILE),
    # A word longer than the 32 characters a grounded piece holds.
    st.builds(lambda ch, n: ch * n, st.sampled_from(["A", "è", "1", "-", "🙂", "\u0301"]), st.integers(33, 120)),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=6),
)


def _part(vocabulary: Sequence[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(list(vocabulary)), numbers, awkward)


def _sentences(vocabulary: Sequence[str]) -> st.SearchStrategy[list[str]]:
    sentence = st.lists(st.tuples(_part(vocabulary), st.sampled_from(SEPARATORS)), min_size=1, max_size=25).map(
        lambda pairs: "".join(part + sep for part, sep in pairs)
    )
    return st.lists(sentence, min_size=1, max_size=8)


def _insert(text: str, where: list[tuple[float, str]]) -> str:
    """`text` with each (fraction, piece) inserted at that fraction of its length."""
    for fraction, piece in sorted(where, reverse=True):
        at = int(fraction * len(text))
        text = text[:at] + piece + text[at:]
    return text


@st.composite
def notes(draw: st.DrawFn, chunk_chars: int = 1500, vocabulary: Sequence[str] = IT_WORDS) -> str:
    """One clinical-looking note (see the module docstring); the empty and blank notes included."""
    if draw(st.integers(0, 99)) == 0:
        return draw(st.sampled_from(["", " ", "\r\n", "\u200b", "\ufeff", " \t\u3000\r"]))
    sentences = draw(_sentences(vocabulary))
    # Repeated substrings: one sentence said again and again (a k-th mention is the k-th occurrence).
    if draw(st.booleans()):
        i = draw(st.integers(0, len(sentences) - 1))
        sentences[i:i] = [sentences[i]] * draw(st.integers(1, 12))
    breaks = draw(st.lists(st.sampled_from(LINE_BREAKS), min_size=len(sentences), max_size=len(sentences)))
    text = "".join(s + b for s, b in zip(sentences, breaks, strict=True))
    normal = draw(st.sampled_from(["as drawn", "as drawn", "NFD", "NFC", "NFKD", "NFD in part"]))
    if normal == "NFD in part":
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + unicodedata.normalize("NFD", text[cut:])
    elif normal == "NFD":
        text = unicodedata.normalize("NFD", text)
    elif normal == "NFC":
        text = unicodedata.normalize("NFC", text)
    elif normal == "NFKD":
        text = unicodedata.normalize("NFKD", text)
    # Stray combining marks and zero-width characters anywhere (the start included).
    places = st.floats(0, 1, allow_nan=False)
    text = _insert(text, draw(st.lists(st.tuples(places, st.sampled_from(COMBINING)), max_size=6)))
    text = _insert(text, draw(st.lists(st.tuples(places, st.sampled_from(ZERO_WIDTH)), max_size=6)))
    if draw(st.integers(0, 9)) == 0:
        text = "\ufeff" + text
    # Length: as drawn, or lengthened (by repetition) to just under, at or past the chunk size.
    size = draw(
        st.one_of(
            st.none(),
            st.integers(chunk_chars - 64, chunk_chars + 64),
            st.integers(chunk_chars + 1, int(chunk_chars * 3.5)),
        )
    )
    if size is not None and text:
        text = (text * (size // len(text) + 1))[:size]
    return text


QUESTIONS_IT = [
    "Quale diuretico?",
    "Quale farmaco assume il paziente?",
    "Qual è la saturazione?",
    "Da quanti giorni?",
    "Quanti anni ha la paziente?",
    "?",
    "",
]


@st.composite
def qa_items(draw: st.DrawFn, chunk_chars: int = 2000) -> tuple[str, str]:
    """(context, question): a note as above and a question, awkward at times (never empty)."""
    context = draw(notes(chunk_chars))
    question = draw(st.one_of(st.sampled_from(QUESTIONS_IT), _sentences(IT_WORDS).map("".join)))
    return context, question[:2000] or "?"


def language_vocabulary(languages: Sequence[str]) -> Sequence[str]:
    return EN_WORDS + WORDS if list(languages) == ["en"] else IT_WORDS


# -- documents for the volume tests -----------------------------------------------------------

# The shipped tasks of each task type.
TYPES: dict[str, tuple[str, ...]] = {
    "ner": ("ner-it-clinical", "ner-en-clinical"),
    "qa": ("qa-it-clinical",),
    "classification": ("classify-it-note-type",),
    "relations": ("re-it-medication", "re-en-medication"),
    "form": ("crf-it-dyspnea",),
}
ALL_TASKS = tuple(name for names in TYPES.values() for name in names)
Document = tuple[int, str, Mapping[str, str]]  # (index, task name, the item's fields but its id)


def collect(strategy: st.SearchStrategy[Any], n: int, seed_value: int) -> list[Any]:
    """`n` values drawn from `strategy` by hypothesis, the same ones for the same seed
    (generation only: no shrinking, no example database)."""
    found: list[Any] = []

    @seed(seed_value)
    @settings(
        max_examples=n,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(value: Any) -> None:
        found.append(value)

    draw()
    assert len(found) >= n, f"hypothesis drew {len(found)} of {n} values"
    return found[:n]


def volume_documents(names: Sequence[str], n: int, seed_value: int = 0) -> list[Document]:
    """`n` documents for the tasks `names` (taking turns), each drawn for its task: a QA
    context and question, or a note in the task's language, sized around its chunk size."""
    docs: list[Document] = []
    for k, name in enumerate(names):
        task = shipped_task(name)
        share = len(range(k, n, len(names)))
        chunk = task.manifest.generation.max_chunk_chars
        at = seed_value * 1_000_003 + k
        if task.type == "qa":
            drawn = [{"context": c, "question": q} for c, q in collect(qa_items(chunk), share, at)]
        else:
            vocabulary = language_vocabulary(task.manifest.languages)
            drawn = [{"text": t} for t in collect(notes(chunk, vocabulary), share, at)]
        docs += [(k + len(names) * i, name, payload) for i, payload in enumerate(drawn)]
    return sorted(docs, key=lambda d: d[0])
