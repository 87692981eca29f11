"""The task manifest format (`adapters/*.yaml`), as strict pydantic models.

Unknown fields are refused, so a typo in a manifest is an error at startup, never a
setting silently ignored. Type-specific checks (labels against the schema, grounded fields)
belong to the task types; loading and cross-checks to `manifests.py`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
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
    instructions: str = Field(min_length=1)
    examples: list[Example] = Field(default_factory=list)
    schema_file: str = Field(alias="schema", min_length=1)
    adapter: AdapterRef
    generation: GenerationSpec = Field(default_factory=lambda: GenerationSpec())

    @field_validator("labels", "attributes")
    @classmethod
    def _unique(cls, value: list[LabelSpec]) -> list[LabelSpec]:
        names = [item.name for item in value]
        if len(names) != len(set(names)):
            raise ValueError("names must be unique")
        return value
