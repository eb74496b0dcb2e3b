"""Small rules of wording shared by the command line and the dashboard."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence


def demo_command(root: str | os.PathLike) -> str:
    """`coherence demo` for the workspace ``root`` (without --workspace it builds the
    default one, not the workspace the page, report or server is about)."""
    return shell_command("coherence", "demo", "--workspace", root)


def shell_command(*words: str | os.PathLike) -> str:
    """A command line a user can paste: each word quoted for the shell where it needs it (a
    workspace path with a space split the suggested command in two)."""
    return " ".join(shlex.quote(str(word)) for word in words)


def plural(n: int, noun: str, many: str | None = None) -> str:
    """'1 dataset', '2 datasets' ('1 batch', '2 batches' with ``many``)."""
    return f"{n} {noun}" if n == 1 else f"{n} {many or noun + 's'}"


def format_ranges(values: Sequence[int]) -> str:
    """(0, 1, 2, 3, 7) → '0-3,7'."""
    parts, values = [], sorted(values)
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


# what a result's dataset fingerprint covers, in every provenance row and caption that shows
# it ("fingerprint of the analysed files" read as a checkpoint's)
TEST_DATA_FINGERPRINT = "test-data fingerprint (the classes' test files)"
