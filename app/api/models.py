"""Request and response bodies of the public API (pydantic v2, validated at the edge)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.tasks.adapters import AdapterChoice

ID_PATTERN = r"^[^\x00-\x1f]{1,256}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_surrogates(value: str) -> str:
    # Lone surrogates (from JSON \ud800 escapes) are not Unicode text: they cannot be
    # encoded, tokenized or returned, so they are rejected up front.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text contains an unpaired UTF-16 surrogate") from exc
    return value


class DocumentIn(_In):
    id: str = Field(pattern=ID_PATTERN, examples=["d1"])
    text: str = Field(examples=["Paziente con febbre e tosse, in terapia con amoxicillina 1 g."])

    _check_text = field_validator("text")(_no_surrogates)


class QaItemIn(_In):
    id: str = Field(pattern=ID_PATTERN, examples=["q1"])
    context: str
    question: str = Field(min_length=1, max_length=2000)

    _check_text = field_validator("context", "question")(_no_surrogates)


class AdapterSelection(_In):
    name: str
    version: str


_ADAPTER_FIELD_DOC = (
    "Optional: a registered adapter to use instead of the task's current one (evaluation, canaries), "
    'or "none" for the base model alone (few-shot baselines).'
)


class _TaskRequest(_In):
    task: str
    adapter: AdapterSelection | Literal["none"] | None = Field(None, description=_ADAPTER_FIELD_DOC)

    def adapter_choice(self) -> AdapterChoice:
        if isinstance(self.adapter, AdapterSelection):
            return (self.adapter.name, self.adapter.version)
        return self.adapter


class NerRequest(_TaskRequest):
    task: str = Field(examples=["ner-it-clinical"])
    documents: list[DocumentIn] = Field(min_length=1)


class QaRequest(_TaskRequest):
    task: str = Field(examples=["qa-it-clinical"])
    items: list[QaItemIn] = Field(min_length=1)


class ClassifyRequest(_TaskRequest):
    task: str = Field(examples=["classify-it-note-type"])
    documents: list[DocumentIn] = Field(min_length=1)


class ModelInfo(BaseModel):
    base: str
    adapter: str | None = Field(description="None when the base model ran without an adapter.")
    adapter_version: str | None


class EntityOut(BaseModel):
    start: int
    end: int
    text: str
    label: str
    attributes: dict[str, Any] = Field(default_factory=dict)


class NerDocumentOut(BaseModel):
    id: str
    entities: list[EntityOut]
    entity_limit_reached: bool = Field(
        False,
        description="A chunk of this document returned the task's maximum number of entities: "
        "the list may be incomplete (use smaller chunks or a larger maxItems for such notes).",
    )


class NerResponse(BaseModel):
    task: str
    model: ModelInfo
    offset_unit: Literal["unicode_code_point"] = "unicode_code_point"
    documents: list[NerDocumentOut]


class AnswerOut(BaseModel):
    text: str
    start: int
    end: int


class QaItemOut(BaseModel):
    id: str
    answer: AnswerOut | None


class QaResponse(BaseModel):
    task: str
    model: ModelInfo
    offset_unit: Literal["unicode_code_point"] = "unicode_code_point"
    items: list[QaItemOut]


class ClassifyDocumentOut(BaseModel):
    id: str
    labels: list[str]


class ClassifyResponse(BaseModel):
    task: str
    model: ModelInfo
    documents: list[ClassifyDocumentOut]


class AdapterRegistration(_In):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    version: str = Field(pattern=r"^[A-Za-z0-9._-]{1,32}$")
    path: str = Field(min_length=1, max_length=4096)
