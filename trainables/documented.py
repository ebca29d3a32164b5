"""Dataclass fields that carry their one-line doc, so the code and the generated reference
(`python -m tune_jobs.reference`: spec keys, trial and epoch columns) cannot drift apart.

    lr: float = documented(1e-3, "optimizer learning rate", allowed="a finite number > 0")
    activation: str = documented("sigmoid", "hidden activation", allowed=ACTIVATIONS)
    field_doc(TrainConfig, "lr")        # -> "optimizer learning rate"

`allowed` is a tuple of choices (the same tuple the validation uses) or a short text.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, field, fields
from typing import Any


def documented(default: Any = MISSING, doc: str = "", *, allowed: tuple | str | None = None,
               default_factory: Any = MISSING) -> Any:
    """A dataclass field with its one-line `doc` (and what values it allows) in its metadata."""
    if not doc:
        raise ValueError("a documented field needs its doc")
    metadata = {"doc": doc, "allowed": allowed}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def field_doc(cls: type, name: str) -> str:
    """The doc of field `name` of dataclass `cls` ("" where it has none)."""
    return doc_of(next(f for f in fields(cls) if f.name == name))


def doc_of(f: Field) -> str:
    """A field's doc ("" where it has none)."""
    return f.metadata.get("doc", "")


def allowed_of(f: Field) -> tuple | str | None:
    """A field's allowed values: a tuple of choices, a short text, or None (any value of its type)."""
    return f.metadata.get("allowed")
