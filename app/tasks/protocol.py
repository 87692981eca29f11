"""The public vocabulary every task endpoint shares (pydantic v2, validated at the edge).

Each task type (app/tasks/types/) declares its own request and response models from these
parts; the HTTP layer turns every registered type into one route.
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from app.tasks.adapters import AdapterChoice
from app.tasks.spec import NAME_PATTERN, VERSION_PATTERN

ID_PATTERN = r"^[^\x00-\x1f]{1,256}$"
ID_DESCRIPTION = "Your id for this item, unique within the request (a repeated id is refused: 422 duplicate-id)."


class In(BaseModel):
    """A request body part: unknown fields are refused, not ignored, and nothing is coerced
    (`false` is not a confidence threshold, `1` is not an id): what the schema says is what passes."""

    model_config = ConfigDict(extra="forbid", strict=True)


def no_surrogates(value: str) -> str:
    # Lone surrogates (from JSON \ud800 escapes) are not Unicode text: they cannot be
    # encoded, tokenized or returned, so they are rejected up front.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text contains an unpaired UTF-16 surrogate") from exc
    return value


class DocumentIn(In):
    id: str = Field(pattern=ID_PATTERN, description=ID_DESCRIPTION, examples=["d1"])
    text: str = Field(examples=["Paziente con febbre e tosse, in terapia con amoxicillina 1 g."])

    _check_text = field_validator("text")(no_surrogates)


class AdapterSelection(In):
    name: str = Field(pattern=NAME_PATTERN, examples=["ner-it-clinical"])
    version: str = Field(pattern=VERSION_PATTERN, examples=["1"])


_ADAPTER_FIELD_DOC = (
    "Optional: a registered adapter to use instead of the task's current one (evaluation, canaries), "
    'or "none" for the base model alone (few-shot baselines).'
)


class TaskRequest(In):
    task: str
    adapter: AdapterSelection | Literal["none"] | None = Field(None, description=_ADAPTER_FIELD_DOC)
    min_confidence: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Optional: leave out entities, relations, answers and labels whose confidence is below this "
        "(a form item under it is unknown).",
    )

    def adapter_choice(self) -> AdapterChoice:
        if isinstance(self.adapter, AdapterSelection):
            return (self.adapter.name, self.adapter.version)
        return self.adapter


class DocumentsRequest(TaskRequest):
    """The common request shape: a list of documents with ids."""

    documents: list[DocumentIn] = Field(min_length=1)


class FhirChoice(In):
    """The request fields of the task types that answer in FHIR R4 too (ner, relations, forms)."""

    format: Literal["json", "fhir"] = Field(
        "json",
        description='"fhir": the answer as a FHIR R4 Bundle (as with Accept: application/fhir+json), for batch '
        "lines and clients that cannot set headers.",
    )
    attach_text: bool = Field(
        False,
        description="FHIR output: put each note's text in its DocumentReference (by default it names only your id).",
    )

    @property
    def wants_fhir(self) -> bool:
        return self.format == "fhir"


@functools.cache
def json_only(model: type[TaskRequest]) -> type[TaskRequest]:
    """A task's request model for routes that keep the JSON answer (review): `format` takes
    only "json", and the schema says so. One class per model: it names an OpenAPI component."""
    if not issubclass(model, FhirChoice):
        return model
    return create_model(
        f"{model.__name__}ForReview",
        __base__=model,
        format=(Literal["json"], Field("json", description="Review keeps the JSON answer.")),
    )


class ModelInfo(BaseModel):
    base: str
    adapter: str | None = Field(description="None when the base model ran without an adapter.")
    adapter_version: str | None


OffsetUnit = Literal["unicode_code_point"]


class TaskResponse(BaseModel):
    """What every task response starts with: the task and the model that answered."""

    task: str
    model: ModelInfo
    min_confidence_applied: bool | None = Field(
        None,
        description="Whether the request's min_confidence could be applied: false when the engine returned no "
        "token log-probabilities, so nothing was left out for its confidence (null: min_confidence not asked for).",
    )


class SpansResponse(TaskResponse):
    """A response whose answers point into the text sent (offsets in `offset_unit`)."""

    offset_unit: OffsetUnit = "unicode_code_point"
