"""Checks shared by the architecture configs (UNetConfig, ViTConfig)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from coherence.errors import RequestError

C = TypeVar("C")


def require_int(config_name: str, name: str, value: Any, minimum: int) -> None:
    """Refuse a non-integer (or bool) field or one below ``minimum``, naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RequestError(f"{config_name}.{name} = {value!r}; it must be an integer ≥ {minimum}")


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build a config dataclass from a dict, refusing unknown fields with the allowed list."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise RequestError(
            f"{cls.__name__} has no field(s) {unknown}; allowed fields: {sorted(fields)}"
        )
    return cls(**data)
