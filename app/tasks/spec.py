"""The task manifest format (`adapters/*.yaml`), as strict pydantic models.

Unknown fields are refused, so a typo in a manifest is an error at startup, never a
setting silently ignored. Type-specific checks (labels against the schema, grounded fields)
belong to the task types; loading and cross-checks to `manifests.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, StringConstraints, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
ITEM_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"
VERSION_PATTERN = r"^[A-Za-z0-9._-]{1,32}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelSpec(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""


class AdapterRef(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    path: str = Field(min_length=1, description="Adapter folder, relative to the adapters root.")


class GenerationSpec(_Strict):
    max_chunk_chars: int = Field(1500, ge=100, le=100_000)
    chunk_overlap_chars: int = Field(200, ge=0, le=10_000)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_group_tokens: int = Field(
        4096, ge=64, le=65_536, description="Forms: the largest worst-case answer of one item group, in tokens."
    )


class RelationTypeSpec(_Strict):
    """A relation type and the entity labels its head and tail may have."""

    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    head: list[str] = Field(min_length=1)
    tail: list[str] = Field(min_length=1)


ItemKind = Literal["choice", "boolean", "integer", "decimal", "date", "text"]

# What each kind of form item may (and must) declare besides name, kind and description.
_ITEM_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "choice": ({"options"}, {"options", "multiple"}),
    "boolean": (set(), set()),
    "integer": ({"min", "max"}, {"min", "max", "unit", "tolerance", "conversions"}),
    "decimal": ({"min", "max", "decimals"}, {"min", "max", "decimals", "unit", "tolerance", "conversions"}),
    "date": (set(), {"years"}),
    "text": (set(), {"max_length"}),
}

_KIND_FIELDS = (
    *("options", "multiple", "min", "max", "decimals", "unit", "tolerance", "years", "max_length"),
    "conversions",
)


class FormItemSpec(_Strict):
    """One item of a form: what the model may answer for it is bounded by its kind."""

    name: str = Field(pattern=ITEM_NAME_PATTERN)
    kind: ItemKind
    description: str = ""
    options: list[str] | None = Field(None, min_length=1, description="choice: the allowed values.")
    multiple: bool | None = Field(None, description="choice: several options may hold at once.")
    min: float | None = Field(None, description="integer, decimal: the smallest value.")
    max: float | None = Field(None, description="integer, decimal: the largest value.")
    decimals: int | None = Field(None, ge=0, le=4, description="decimal: the most decimals.")
    unit: str | None = Field(None, max_length=32)
    conversions: dict[Annotated[str, StringConstraints(min_length=1, max_length=16)], PositiveFloat] | None = Field(
        None,
        max_length=8,
        description="integer, decimal: other units a note may state the value in, each with the factor to this "
        "item's unit ({g: 1000} for an item in mg); the value's check against its evidence allows them.",
    )
    tolerance: float | None = Field(None, ge=0, description="integer, decimal: scoring counts values this close.")
    years: tuple[int, int] | None = Field(None, description="date: the first and last year (default 1900, 2100).")
    max_length: int | None = Field(None, ge=48, le=1000, description="text: the longest span (default 120).")

    @model_validator(mode="after")
    def _fits_kind(self) -> FormItemSpec:
        needed, allowed = _ITEM_FIELDS[self.kind]
        given = {name for name in _KIND_FIELDS if getattr(self, name) is not None}
        missing = sorted(needed - given)
        if missing:
            bounds = " (unbounded numbers are refused)" if self.kind in ("integer", "decimal") else ""
            raise ValueError(f"{', '.join(missing)}: required for {self.kind} items{bounds}")
        extra = sorted(given - allowed)
        if extra:
            raise ValueError(f"{', '.join(extra)}: not a field of {self.kind} items")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min: must not exceed max")
        if self.kind == "integer" and not all(float(v or 0).is_integer() for v in (self.min, self.max)):
            raise ValueError("min, max: must be whole numbers for integer items")
        if self.options is not None and len(set(self.options)) != len(self.options):
            raise ValueError("options: must be unique")
        if self.years is not None and not 1000 <= self.years[0] <= self.years[1] <= 9999:
            raise ValueError("years: must be [first, last] with 1000 <= first <= last <= 9999")
        return self


FhirResourceName = Literal["Condition", "MedicationStatement", "Observation"]
Assertion = Literal["negated", "uncertain", "historical", "family"]
DosagePart = Literal["dose", "frequency", "route", "duration"]
_URI = r"^(https?://[^\s]+|urn:[a-z0-9][a-z0-9-]{0,31}:[^\s]+)$"


class CodingSpec(_Strict):
    """A code of a published system (a form item's LOINC code, say)."""

    system: str = Field(pattern=_URI)
    code: str = Field(min_length=1, max_length=64)
    display: str = ""


class FhirItemSpec(_Strict):
    code: CodingSpec | None = Field(None, description="The item's concept in a published code system.")
    ucum: str | None = Field(None, min_length=1, max_length=32, description="The item's unit as a UCUM code.")


class FhirSpec(_Strict):
    """How a task's answers map to FHIR R4 resources (`Accept: application/fhir+json`)."""

    labels: dict[str, FhirResourceName] = Field(
        default_factory=dict, description="Entity label -> resource; labels not named are left out of bundles."
    )
    attributes: dict[str, Assertion] = Field(
        default_factory=dict, description="Entity attribute -> the assertion it states (negated, family, ...)."
    )
    relations: dict[str, DosagePart] = Field(
        default_factory=dict, description="Relation type -> the part of a MedicationStatement's dosage its tail is."
    )
    items: dict[str, FhirItemSpec] = Field(
        default_factory=dict,
        description="Forms: an item's published code and UCUM unit (every filled item is an "
        "Observation; these add codings).",
    )


class TerminologySpec(_Strict):
    """A terminology the entities of some labels are coded with (see app/tasks/terminology.py)."""

    labels: list[str] = Field(min_length=1, description="The entity labels coded from this file.")
    file: str = Field(
        min_length=1, description="CSV or TSV file, relative to the manifest's folder, or an absolute path."
    )
    systems: list[str] = Field(
        default_factory=list, description="System URIs the file may use besides the known FHIR ones."
    )
    candidates: int = Field(5, ge=1, le=20, description="How many fuzzy-matched codes the model chooses among.")
    min_score: float = Field(
        70.0, ge=0.0, le=100.0, description="The lowest fuzzy-match score (0-100) a candidate may have."
    )


class Example(_Strict):
    """A few-shot example: the prompt's input fields and the answer, in the model's format."""

    input: dict[str, str]
    output: dict[str, Any]


class TaskManifest(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    type: str = Field(min_length=1, description="A registered task type (ner, qa, classification, ...).")
    languages: list[str] = Field(min_length=1)
    description: str = ""
    labels: list[LabelSpec] = Field(default_factory=list)
    attributes: list[LabelSpec] = Field(default_factory=list)
    multi_label: bool = False
    relation_types: list[RelationTypeSpec] = Field(default_factory=list)
    items: list[FormItemSpec] = Field(default_factory=list)
    instructions: str = Field(min_length=1)
    examples: list[Example] = Field(default_factory=list)
    schema_file: str | None = Field(
        None,
        alias="schema",
        min_length=1,
        description="The output schema file; types that derive it (forms) have none.",
    )
    adapter: AdapterRef
    generation: GenerationSpec = Field(default_factory=lambda: GenerationSpec())
    on_evidence_mismatch: Literal["lower", "unknown"] | None = Field(
        None,
        description="Forms: a number or date its evidence does not state is kept with its confidence halved "
        "(lower, the default) or returned as unknown; either way it says evidence_mismatch.",
    )
    values_stated_in_note: bool = Field(
        False,
        description="Forms: the grammar lets a number or date item take only a value the chunk states (any "
        "notation, the item's conversions) instead of any value within bounds; measured in docs/benchmarks.md.",
    )
    fhir: FhirSpec | None = Field(None, description="How answers map to FHIR R4 resources; without it, no FHIR.")

    terminologies: list[TerminologySpec] = Field(
        default_factory=list, description="Entity tasks: the terminologies entities are coded with, per label."
    )

    @field_validator("labels", "attributes", "relation_types", "items")
    @classmethod
    def _unique(cls, value: list[Any]) -> list[Any]:
        names = [item.name for item in value]
        if len(names) != len(set(names)):
            raise ValueError("names must be unique")
        return value
