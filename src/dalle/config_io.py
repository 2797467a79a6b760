"""Configs to and from JSON: a saved ``config.json`` states every field, checked against the
dataclass it names (unknown, missing and mistyped fields are clear errors). Two class-level
tables keep old folders loading: ``ADDED_FIELDS`` (fields added since, which take their
defaults) and ``REMOVED_FIELDS`` (a removed option and its off value, at which it is dropped).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a saved dict, rejecting unknown and missing fields with a clear error."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    data = drop_removed(data, getattr(cls, "REMOVED_FIELDS", {}), source, cls.__name__)
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown} for {cls.__name__}")
    # A saved config states every field, except those added after it was written (a class's
    # ``ADDED_FIELDS``), which take their defaults: the behaviour of the code that saved it.
    missing = sorted(names - set(data) - set(getattr(cls, "ADDED_FIELDS", ())))
    if missing:
        raise ValueError(f"{source}: missing field(s) {missing} for {cls.__name__}")
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            _check_type(f.name, str(f.type), data[f.name], source)
    try:
        return cls(**data)
    except (TypeError, ValueError) as e:  # the config's own validation: name the file too
        raise ValueError(f"{source}: {e}") from None


def drop_removed(
    data: dict[str, Any], removed: dict[str, Any], source: str, owner: str
) -> dict[str, Any]:
    """``data`` without the fields of ``removed`` (a removed option's name -> its off value),
    each of which it may hold only at that value: a folder saved with the option on was made
    by code that is gone, so it is a ``ValueError`` naming ``source`` and the field."""
    for name, off in removed.items():
        if name in data and data[name] != off:
            raise ValueError(
                f"{source}: {name}={data[name]!r} was an experimental option of {owner}, "
                f"since removed (see docs/experiments.md); only {name}={off!r} still loads"
            )
    return {k: v for k, v in data.items() if k not in removed}


_SCALARS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,)}


def _check_type(name: str, annotation: str, value: Any, source: str) -> None:
    """ValueError unless a saved ``value`` fits a scalar field's annotation (``int``, ``float``,
    ``str``, ``bool``, each optionally ``| None``); other annotations are checked by the
    config's own validation."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None and "None" in kinds:
        return
    base = [k for k in kinds if k != "None"]
    if len(base) != 1 or base[0] not in (*_SCALARS, "bool"):
        return
    kind = base[0]
    ok = isinstance(value, bool) if kind == "bool" else (
        isinstance(value, _SCALARS[kind]) and not isinstance(value, bool)
    )
    if not ok:
        raise ValueError(f"{source}: field {name!r} must be {annotation}, got {value!r}")


def load_config(cls: type[C], path: Path) -> C:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"missing config file {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return from_dict(cls, data, source=str(path))
