"""Domain exceptions: every message names the bad input and says how to fix it.

The CLI and the dashboard catch exactly these (all ``ValueError`` subclasses) and show one
sentence instead of a traceback.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)


class CoherenceError(ValueError):
    """Base class for user-facing errors of Coherence Explorer."""


class SchemaError(CoherenceError):
    """An HDF5 file does not follow The Well schema (names the file, the rule and the fix)."""


class CheckpointError(CoherenceError):
    """A checkpoint directory is missing, unsafe, or does not match its config or dataset."""


class RequestError(CoherenceError):
    """An analysis, simulation or training request asks for something impossible."""


class SimulationError(CoherenceError):
    """A solver was given an unphysical or malformed state."""


class WorkspacePathError(CoherenceError):
    """A path points outside the workspace the product is allowed to read and write."""


def parse_choice(kind: type[E], value: object, what: str) -> E:
    """The member of ``kind`` named ``value``; otherwise a RequestError that names the bad
    value and lists the allowed ones (``what``: how the message calls the choice)."""
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise RequestError(f"unknown {what} {value!r}; choose one of: {allowed}") from None


class ConvergenceWarning(UserWarning):
    """An iterative solve (cg) stopped at its iteration cap before reaching its tolerance, so
    the result is less accurate than asked. Filter it with ``warnings.filterwarnings``, or
    turn it into an error with ``warnings.simplefilter("error", ConvergenceWarning)``.

    Its numbers travel with it, so a caller of ``influence_matrix`` (which returns H alone)
    reads them from ``warnings.catch_warnings(record=True)`` without parsing the text:
    ``worst_residual``, ``rtol`` and ``residuals`` (one per column)."""

    def __init__(
        self,
        message: str,
        *,
        worst_residual: float | None = None,
        rtol: float | None = None,
        residuals: tuple[float, ...] = (),
    ) -> None:
        super().__init__(message)
        self.worst_residual = worst_residual
        self.rtol = rtol
        self.residuals = tuple(residuals)
