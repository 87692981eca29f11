"""A large generated form (every item kind), for tests that a form far bigger than one
generation's budget is split into item groups that each fit, with every item answered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

BIG_FORM = "crf-big-generated"

_KINDS: list[dict[str, Any]] = [
    {"kind": "choice", "options": ["assente", "lieve", "moderata", "grave"]},
    {"kind": "choice", "multiple": True, "options": ["destra", "sinistra", "bilaterale", "apicale", "basale"]},
    {"kind": "boolean"},
    {"kind": "integer", "min": 0, "max": 300, "unit": "mmHg"},
    {"kind": "decimal", "min": 0, "max": 99.9, "decimals": 1, "unit": "mg/dL", "tolerance": 0.1},
    {"kind": "date", "years": [2000, 2030]},
    {"kind": "text", "max_length": 80},
]


def big_form_items(n: int = 140) -> list[dict[str, Any]]:
    """n items cycling through every kind: item_000 (choice), item_001 (multiple choice), ..."""
    return [{"name": f"item_{i:03d}", **_KINDS[i % len(_KINDS)], "description": f"voce {i}"} for i in range(n)]


def write_big_form(tasks_dir: Path, n: int = 140, **generation: Any) -> str:
    """Write the generated form's manifest into tasks_dir (the schema is derived: no file)."""
    manifest = {
        "name": BIG_FORM,
        "type": "form",
        "languages": ["it"],
        "items": big_form_items(n),
        "instructions": "Compila la scheda dal testo.",
        "adapter": {"name": BIG_FORM, "version": "1", "path": BIG_FORM},
        "generation": {"max_chunk_chars": 1500, "chunk_overlap_chars": 200, "temperature": 0.0, **generation},
    }
    (tasks_dir / f"{BIG_FORM}.yaml").write_text(yaml.safe_dump(manifest, allow_unicode=True, sort_keys=False))
    return BIG_FORM
