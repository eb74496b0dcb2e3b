"""Small rules of wording shared by the command line and the dashboard."""

from __future__ import annotations


def plural(n: int, noun: str, many: str | None = None) -> str:
    """'1 dataset', '2 datasets' ('1 batch', '2 batches' with ``many``)."""
    return f"{n} {noun}" if n == 1 else f"{n} {many or noun + 's'}"
