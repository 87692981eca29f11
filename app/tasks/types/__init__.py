"""Task types: every module in this package defines one and registers it (see base.py).

A new type is one module here plus its task manifests and schemas; nothing else in the
code names it. The modules are found by listing the package, once, on first use.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

from app.tasks.types.base import TaskType, registered


@cache
def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def task_types() -> dict[str, TaskType[Any]]:
    """Every task type by name."""
    _discover()
    return registered()


def task_type(name: str) -> TaskType[Any] | None:
    return task_types().get(name)
