"""Typed fields of a user's JSON file (a checkpoint's config.json, history.json).

``json.loads`` gives whatever the file holds; code that then does ``dict(data["model"])`` on
a string dies deep inside with ``ValueError: dictionary update sequence…``. Every field is
read through :class:`JsonObject` instead, and a wrong type becomes one error that names the
file, the field (dotted path), what was found and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coherence.errors import CheckpointError, CoherenceError

_MISSING: Any = object()


def describe(value: Any) -> str:
    """How a message names a JSON value: its type and, when short, the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "…"
        return f"the string {shown!r}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' * (len(value) != 1)}"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


class JsonObject:
    """One JSON object of a file, read field by field with type checks."""

    def __init__(
        self,
        data: Any,
        where: str | Path,
        path: str = "",
        error: type[CoherenceError] = CheckpointError,
    ) -> None:
        self.where, self.path, self.error = str(where), path, error
        if not isinstance(data, Mapping):
            self.fail(path or "the top level", data, "a JSON object")
        self.data: Mapping[str, Any] = data

    def fail(self, field: str, found: Any, expected: str) -> None:
        """Raise the one error every wrong field gets."""
        raise self.error(
            f"{self.where}: field {field!r} is {describe(found)}; expected {expected}. "
            "Fix the file or re-save it"
        )

    def _name(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data

    def _get(self, name: str, default: Any) -> Any:
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise self.error(f"{self.where}: field {self._name(name)!r} is missing; re-save it")
        return default

    def object(self, name: str, default: Any = _MISSING) -> JsonObject:
        value = self._get(name, {} if default is not _MISSING else _MISSING)
        return JsonObject(value, self.where, self._name(name), self.error)

    def string(self, name: str, default: Any = _MISSING) -> str:
        value = self._get(name, default)
        if not isinstance(value, str):
            self.fail(self._name(name), value, "a string")
        return value

    def optional_string(self, name: str) -> str | None:
        value = self._get(name, None)
        if value is not None and not isinstance(value, str):
            self.fail(self._name(name), value, "a string or null")
        return value

    def integer(self, name: str, default: Any = _MISSING, minimum: int | None = None) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(self._name(name), value, "an integer")
        if minimum is not None and value < minimum:
            self.fail(self._name(name), value, f"an integer ≥ {minimum}")
        return value

    def number(self, name: str, default: Any = _MISSING) -> float:
        """A JSON number (NaN and ±inf, as Python's json writes them, are numbers too)."""
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(self._name(name), value, "a number")
        return float(value)

    def string_list(self, name: str, default: Any = _MISSING) -> tuple[str, ...]:
        value = self._get(name, default)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            self.fail(self._name(name), value, "a list of strings")
        return tuple(value)

    def integer_list(
        self, name: str, *, length: int | None = None, minimum: int | None = None
    ) -> tuple[int, ...]:
        value = self._get(name, _MISSING)
        if not isinstance(value, list | tuple) or (length is not None and len(value) != length):
            expected = f"a list of {length} integers" if length else "a list of integers"
            self.fail(self._name(name), value, expected)
        for index, item in enumerate(value):  # name the bad item, not only the list
            if isinstance(item, bool) or not isinstance(item, int):
                self.fail(f"{self._name(name)}[{index}]", item, "an integer")
            if minimum is not None and item < minimum:
                self.fail(f"{self._name(name)}[{index}]", item, f"an integer ≥ {minimum}")
        return tuple(value)

    def string_map(self, name: str) -> dict[str, str]:
        """An object whose values are all strings (absent: empty)."""
        obj = self.object(name, default={})
        for key, value in obj.data.items():
            if not isinstance(value, str):
                obj.fail(obj._name(key), value, "a string")
        return dict(obj.data)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


def json_list(data: Any, where: str | Path, what: str, error=CheckpointError) -> list[Any]:
    """The top level of a file that must hold a JSON list (``what`` says of what)."""
    if not isinstance(data, list):
        raise error(
            f"{where}: the top level is {describe(data)}; expected a JSON list of {what}. "
            "Fix the file or re-save it"
        )
    return data
