"""The kinds of sidebar control (a choice, a multi-choice, a number) and what every control
does: parse and write its URL text, fill, repair and read its session state, describe its
widget. ``controls`` holds the table of rows built from these kinds.

Pure (no streamlit): session state is any MutableMapping, and a control names the streamlit
function that draws it (``widget``) with the arguments ``widget_args`` gives; the sidebar
makes the call.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coherence.dashboard.selection import Cached
from coherence.dashboard.workspace_scan import Catalog, DatasetEntry
from coherence.errors import RequestError

State = MutableMapping[str, Any]  # st.session_state, or a dict in tests


@dataclass
class Scope:
    """What a control may depend on: the catalog, the Selection fields the rows before it
    decided (rows run in table order), whether the server sees a GPU, and how to tell a
    cached analysis (which default a dataset gets)."""

    catalog: Catalog
    values: dict[str, Any] = field(default_factory=dict)
    cuda_available: bool = False
    cached: Cached | None = None

    @property
    def entry(self) -> DatasetEntry | None:
        return self.catalog.dataset(self.values.get("dataset"))

    @property
    def arch(self) -> str:
        """The architecture of group A ('' when none is chosen)."""
        names = self.values.get("checkpoints") or ()
        checkpoint = self.catalog.checkpoint(names[0]) if names else None
        return checkpoint.arch if checkpoint else ""


@dataclass(frozen=True, kw_only=True)
class Control:
    """One row: a Selection field ↔ a URL key ↔ a session-state key ↔ a widget.

    A link's value for ``key`` is parsed (``parse`` raises RequestError saying why it is
    bad, and the default is used instead); a missing one keeps the default selection's value
    (``absent``). The session state holds ``to_state(value)``; ``prepare`` repairs a stale
    value before drawing; ``read`` turns the state back into fields.
    """

    key: str  # URL key
    field: str  # Selection field
    state: str  # session-state key (sb_*)
    label: str  # widget label
    help: str = ""
    widget: str = ""  # the streamlit function that draws it ("": the sidebar draws it)
    divider: bool = False  # a divider above the widget: a new section of the sidebar
    url_rank: int = 0  # URL key order: rank 0 in table order, then 1, 2 (keys not always set)

    # -------------------------------------------------------------- fields and URL ----

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether the control applies (drawn, read); otherwise its field is None."""
        return True

    def value(self, values: Mapping[str, Any]) -> Any:
        return values[self.field]

    def assign(self, value: Any) -> dict[str, Any]:
        """The Selection fields that ``value`` sets."""
        return {self.field: value}

    def parse(self, raw: str, scope: Scope) -> Any:
        raise NotImplementedError

    def decode(self, raw: str, scope: Scope) -> dict[str, Any]:
        """The fields a link's text sets; RequestError (why it is bad) otherwise."""
        return self.assign(self.parse(raw, scope))

    def text(self, value: Any) -> str | None:
        """The URL text of a value (None: the key is left out)."""
        return None if value is None else str(value)

    def absent(self, scope: Scope) -> Any:
        """The value when the link has no ``key``: the default selection's."""
        return self.value(scope.values)

    def fallback(self, scope: Scope) -> Any:
        """The value used in place of a bad one: the default selection's."""
        return self.value(scope.values)

    def fallback_text(self, scope: Scope) -> str:
        return self.text(self.fallback(scope)) or "none"

    # -------------------------------------------------------------- session state ----

    def to_state(self, value: Any, scope: Scope) -> Any:
        return value

    def load(self, state: State, scope: Scope) -> None:
        """The selection's value (``scope.values``) into the session state."""
        state[self.state] = self.to_state(self.value(scope.values), scope)

    def reset(self, scope: Scope) -> Any:
        """The session value that replaces a stale one."""
        raise NotImplementedError

    def prepare(self, state: State, scope: Scope) -> None:
        """Replace a session value the workspace no longer offers (before drawing)."""
        if self.state not in state:
            state[self.state] = self.reset(scope)

    def read(self, state: State, scope: Scope) -> dict[str, Any]:
        return self.assign(state[self.state])

    # ---------------------------------------------------------------------- widget ----

    def drawn(self, scope: Scope) -> bool:
        return bool(self.widget)

    def widget_args(self, scope: Scope) -> dict[str, Any]:
        return {"help": self.help}

    def caption(self, state: State, scope: Scope) -> str | None:
        """A line under the widget, from its value and the fields read before it."""
        return None


def keep_valid(state: State, key: str, options: Sequence[Any], default: Any) -> None:
    """Reset a single choice the options no longer hold."""
    if key not in state or state[key] not in options:
        state[key] = default


def keep_valid_many(state: State, key: str, options: Sequence[Any], default: Any) -> None:
    """Drop the picks the options no longer hold (a missing key gets ``default``)."""
    if key not in state:
        state[key] = default
        return
    value = list(state[key] or [])
    kept = [v for v in value if v in options]
    if kept != value:
        state[key] = kept


@dataclass(frozen=True, kw_only=True)
class Choice(Control):
    """One of ``choices`` (a selectbox); a link's value must be one of them."""

    choices: tuple[str, ...] = ()
    default: str = ""
    labels: Callable[[Scope], Callable[[str], str]] | None = None  # format_func of a scope
    widget: str = "selectbox"

    def options(self, scope: Scope) -> Sequence[Any]:
        return self.choices

    def parse(self, raw: str, scope: Scope) -> Any:
        options = self.options(scope)
        if raw not in options:
            raise RequestError(f"choose one of {', '.join(map(str, options))}")
        return raw

    def reset(self, scope: Scope) -> Any:
        return self.default

    def prepare(self, state: State, scope: Scope) -> None:
        keep_valid(state, self.state, self.options(scope), self.reset(scope))

    def widget_args(self, scope: Scope) -> dict[str, Any]:
        args = {"options": list(self.options(scope)), "help": self.help}
        if self.labels is not None:
            args["format_func"] = self.labels(scope)
        return args


@dataclass(frozen=True, kw_only=True)
class Multi(Choice):
    """Several of the options (a multiselect); the URL holds them comma-separated."""

    widget: str = "multiselect"

    def text(self, value: Any) -> str | None:
        return ",".join(map(str, value))

    def to_state(self, value: Any, scope: Scope) -> Any:
        return list(value)

    def read(self, state: State, scope: Scope) -> dict[str, Any]:
        return self.assign(tuple(state[self.state]))

    def prepare(self, state: State, scope: Scope) -> None:
        keep_valid_many(state, self.state, self.options(scope), self.reset(scope))


# The URL form is ASCII (``to_query`` writes it): Python's float() and int() would also take
# "１", "٣", "1_0" or " 1 ", which no link of ours holds.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?|[+-]?(?:nan|inf)")


def parse_float(text: str) -> float:
    """A finite float written in ASCII, or a RequestError saying why not."""
    if not _NUMBER.fullmatch(text):
        raise RequestError("not a number")
    value = float(text)
    if not math.isfinite(value):
        raise RequestError("not a finite number")
    return value


@dataclass(frozen=True, kw_only=True)
class Number(Control):
    """A float within ``bounds`` (a number_input); the URL holds its exact repr."""

    bounds: tuple[float, float]
    what: str  # how a bad value's message names it: "{what} must lie in [lo, hi]"
    default: float = 0.0
    format: str = "%.1e"
    step: float = 1e-4
    decades: bool = False  # − / + divide / multiply by 10 (see ``step_decade``)
    widget: str = "number_input"

    def parse(self, raw: str, scope: Scope) -> float:
        value, (lo, hi) = parse_float(raw), self.bounds
        if not lo <= value <= hi:
            raise RequestError(f"{self.what} must lie in [{lo:g}, {hi:g}]")
        return value

    def text(self, value: Any) -> str | None:
        return None if value is None else repr(float(value))

    def to_state(self, value: Any, scope: Scope) -> Any:
        return float(value)

    def reset(self, scope: Scope) -> float:
        return self.default

    def prepare(self, state: State, scope: Scope) -> None:
        value, (lo, hi) = state.get(self.state), self.bounds
        if not isinstance(value, float) or not lo <= value <= hi:
            state[self.state] = self.reset(scope)

    def widget_args(self, scope: Scope) -> dict[str, Any]:
        lo, hi = self.bounds
        return {
            "min_value": lo,
            "max_value": hi,
            "format": self.format,
            "step": self.nudge if self.decades else self.step,
            "help": self.help,
        }

    @property
    def nudge(self) -> float:
        """The widget's own step when ``decades``: the smallest value, which ``step_decade``
        recognises and turns into a decade (a typed value never differs by exactly that)."""
        return self.bounds[0]

    def step_decade(self, state: State) -> None:
        """The widget's on_change when ``decades``: a value one ``nudge`` above or below the
        last becomes ten times or a tenth of it, within bounds.

        Why: λ spans decades (1e-6 … 1e-1), and a linear step of 1e-4 turned the default into
        2e-4, 3e-4 on "+" while "−" stayed disabled (1e-4 − 1e-4 is under the bound).
        """
        value, last = state[self.state], state.get(self._last_key)
        if isinstance(last, float) and last > 0:
            change = value - last
            if abs(abs(change) - self.nudge) <= 0.5 * self.nudge:
                lo, hi = self.bounds
                stepped = last * 10.0 if change > 0 else last / 10.0
                value = min(hi, max(lo, float(f"{stepped:.6g}")))  # 1e-6, not 1.0…02e-06
                state[self.state] = value
        state[self._last_key] = value

    def remember(self, state: State) -> None:
        """Before drawing the widget: the value the next − / + steps from."""
        state[self._last_key] = state[self.state]

    @property
    def _last_key(self) -> str:
        return f"{self.state}_last"

    def read(self, state: State, scope: Scope) -> dict[str, Any]:
        return self.assign(float(state[self.state]))
