"""The controls whose rules are their own: the dataset (a new one brings its defaults), the
model groups (their seeds, compare mode), classes, trajectories (ranges in the URL), the time
window (two fields in one key) and the responses. The table in ``controls`` holds one row of
each; the checks they report live in ``checks`` (and the request, which it asks).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coherence.analysis.observables import parse_responses
from coherence.dashboard.checks import (
    check_classes,
    check_group,
    check_responses,
    check_trajectories,
    parse_ranges,
    split_list,
    window_problem,
)
from coherence.dashboard.control_kinds import (
    Control,
    Multi,
    Scope,
    State,
    keep_valid,
    keep_valid_many,
)
from coherence.dashboard.selection import (
    DEFAULT_BATCHES,
    RESPONSES,
    dataset_defaults,
    default_window,
)
from coherence.dashboard.workspace_scan import Catalog, DatasetEntry, class_order
from coherence.errors import RequestError
from coherence.wording import format_ranges, plural

RESPONSE_LABELS = {"smse": "SMSE (scaled MSE)", "mass": "mass", "energy": "energy"}


def group_label(catalog: Catalog, dataset: str, checkpoints: Sequence[str]) -> str | None:
    """The label of the model group that holds ``checkpoints`` (None: none)."""
    group = catalog.group_of(dataset, checkpoints[0]) if checkpoints else None
    return group.label if group else None


def in_group_order(catalog: Catalog, dataset: str, names: Sequence[str]) -> tuple[str, ...]:
    """``names`` in their group's order (by seed), names outside the group last."""
    if not names:
        return ()
    group = catalog.group_of(dataset, names[0])
    order = group.checkpoints if group else tuple(names)
    return tuple(n for n in order if n in names) + tuple(n for n in names if n not in order)


def offered_datasets(catalog: Catalog) -> list[str]:
    """The datasets the sidebar offers: those with at least one fitting checkpoint."""
    return [d.name for d in catalog.datasets if catalog.groups(d)]


@dataclass(frozen=True, kw_only=True)
class Dataset(Control):
    """The dataset; one named by a link brings its own defaults (group, classes, window)."""

    help: str = "Datasets under `<workspace>/datasets` with at least one fitting checkpoint."

    def decode(self, raw: str, scope: Scope) -> dict[str, Any]:
        if raw == scope.values[self.field]:
            return {}
        catalog = scope.catalog
        if catalog.dataset(raw) is None:
            names = ", ".join(d.name for d in catalog.datasets)
            # one the scan skipped: it exists, and "no such dataset" sent users looking for it
            said = (f"dataset {raw}: ", f"datasets/{raw}: ")  # unreadable, or a link outside
            why = next((p for p in catalog.problems if p.startswith(said)), None)
            if why is not None:
                raise RequestError(f"the workspace's {why} (it offers {names})")
            raise RequestError(f"no such dataset (the workspace has {names})")
        defaults = dataset_defaults(catalog, raw, cached=scope.cached)
        if defaults is None:
            raise RequestError("no checkpoint in the workspace fits this dataset")
        return dict(vars(defaults))

    def prepare(self, state: State, scope: Scope) -> None:
        names = offered_datasets(scope.catalog)
        keep_valid(state, self.state, names, names[0])


VANISHED = "_vanished_checkpoints"  # picks that left the workspace: the page says so


@dataclass(frozen=True, kw_only=True)
class Group(Control):
    """The seeds of one model group: group A (``suffix`` '') or compare mode's group B
    (``suffix`` '_b'; empty: no comparison). The group's selectbox sits in ``group_key``."""

    suffix: str
    help: str = "Bands in the panels are median and Q1–Q3 across the selected seeds."

    @property
    def group_key(self) -> str:
        return f"sb_group{self.suffix}"

    @property
    def second(self) -> bool:
        return bool(self.suffix)

    def parse(self, raw: str, scope: Scope) -> tuple[str, ...]:
        catalog, entry = scope.catalog, scope.entry
        names = split_list(raw)
        error = check_group(catalog, entry, names)
        if error:
            raise RequestError(error)
        order = catalog.group_of(entry, names[0]).checkpoints
        value = tuple(n for n in order if n in names)
        if self.second and value == scope.values["checkpoints"]:
            raise RequestError("it repeats the first group")
        return value

    def text(self, value: Any) -> str | None:
        return ",".join(value) if value or not self.second else None

    def fallback_text(self, scope: Scope) -> str:
        return ",".join(self.fallback(scope)) or "no comparison"

    def load(self, state: State, scope: Scope) -> None:
        catalog, values = scope.catalog, scope.values
        dataset, names = values["dataset"], self.value(values)
        if not self.second:
            state[self.group_key] = group_label(catalog, dataset, names)
            state[self.state] = list(names)
            return
        state["sb_compare"] = bool(names)
        if names:
            state[self.group_key] = group_label(catalog, dataset, names)
            state[self.state] = list(names)
            return
        groups = catalog.groups(dataset)
        other = next((g for g in groups if g.label != state["sb_group"]), None)
        state[self.group_key] = other.label if other else state["sb_group"]
        state[self.state] = list(other.checkpoints if other else values["checkpoints"])

    def prepare(self, state: State, scope: Scope) -> None:
        entry = scope.entry
        if self.second:
            if len(scope.catalog.groups(entry)) < 2 and not state.get("sb_compare"):
                state["sb_compare"] = False
            state.setdefault("sb_compare", False)
            if not state["sb_compare"]:
                return
        groups = scope.catalog.groups(entry)
        labels = [g.label for g in groups]
        first = state.get("sb_group") if self.second else None
        default = next((label for label in labels if label != first), labels[0])
        if self.group_key not in state:  # the second group was just switched on
            state[self.state] = list(groups[labels.index(default)].checkpoints)
        gone = [n for n in state.get(self.state) or () if scope.catalog.checkpoint(n) is None]
        if gone:  # deleted or moved under an open page: said, not dropped in silence
            state[VANISHED] = [*state.get(VANISHED, ()), *gone]
        keep_valid(state, self.group_key, labels, default)
        group = groups[labels.index(state[self.group_key])]
        keep_valid_many(state, self.state, group.checkpoints, list(group.checkpoints))

    def read(self, state: State, scope: Scope) -> dict[str, Any]:
        if self.second and not state.get("sb_compare"):
            return self.assign(())
        names = in_group_order(scope.catalog, scope.values["dataset"], state[self.state])
        return self.assign(names)


@dataclass(frozen=True, kw_only=True)
class Classes(Multi):
    """Test-split classes, one trajectory of each per batch."""

    help: str = "Initial-condition classes; one test trajectory of each forms a batch."

    def options(self, scope: Scope) -> Sequence[Any]:
        return list(scope.entry.classes)

    def parse(self, raw: str, scope: Scope) -> tuple[str, ...]:
        classes = class_order(split_list(raw))
        error = check_classes(scope.entry, classes)
        if error:
            raise RequestError(error)
        return classes

    def reset(self, scope: Scope) -> Any:
        return list(scope.entry.classes[:3])


@dataclass(frozen=True, kw_only=True)
class Trajectories(Multi):
    """Test trajectory indices, one batch each; '0-3,7' in the URL."""

    def n_test(self, scope: Scope) -> int:
        return scope.entry.n_test(scope.values.get("classes") or None)

    def options(self, scope: Scope) -> Sequence[Any]:
        return list(range(self.n_test(scope)))

    def parse(self, raw: str, scope: Scope) -> tuple[int, ...]:
        classes = scope.values["classes"]
        trajectories = parse_ranges(raw, self.n_test(scope))
        error = check_trajectories(scope.entry, classes, trajectories)
        if error:
            raise RequestError(error)
        return trajectories

    def fallback(self, scope: Scope) -> tuple[int, ...]:
        return tuple(range(min(DEFAULT_BATCHES, self.n_test(scope))))

    def absent(self, scope: Scope) -> tuple[int, ...]:
        """The default's trajectories, unless the link's classes have fewer."""
        current = self.value(scope.values)
        n_test = self.n_test(scope)
        return self.fallback(scope) if any(t >= n_test for t in current) else current

    def text(self, value: Any) -> str | None:
        return format_ranges(value)

    def reset(self, scope: Scope) -> Any:
        return self.options(scope)[:6]

    def widget_args(self, scope: Scope) -> dict[str, Any]:
        n_test = self.n_test(scope)
        help = f"{n_test} test trajectories per selected class; the paper uses 6 batches."
        return {"options": self.options(scope), "help": help}


_WINDOW = re.compile(r"([0-9]+):([0-9]+)")  # any length: the range check says why


@dataclass(frozen=True, kw_only=True)
class Window(Control):
    """The time window: fields t_start and n_steps, 'START:STEPS' in the URL, a slider over
    snapshot indices (start, end) in the sidebar."""

    widget: str = "slider"
    help: str = (
        "Transitions from the first to the last selected snapshot; N = classes × steps "
        "examples per batch. A link writes it as window=START:STEPS, as the CLI's --window "
        "does: snapshots 3–16 are window=3:13."
    )

    def value(self, values: Mapping[str, Any]) -> tuple[int, int]:
        return values["t_start"], values["n_steps"]

    def assign(self, value: Any) -> dict[str, Any]:
        return {"t_start": value[0], "n_steps": value[1]}

    def parse(self, raw: str, scope: Scope) -> tuple[int, int]:
        match = _WINDOW.fullmatch(raw)
        if match is None:
            raise RequestError("expected START:STEPS (two whole numbers), e.g. 0:16")
        start, steps = int(match.group(1)), int(match.group(2))
        error = window_problem(scope.entry, len(scope.values["classes"]), start, steps)
        if error:
            raise RequestError(error)
        return start, steps

    def fallback(self, scope: Scope) -> tuple[int, int]:
        """The default window of the classes chosen (``default_window``)."""
        return default_window(scope.entry, len(scope.values["classes"]))

    absent = fallback

    def text(self, value: Any) -> str | None:
        return f"{value[0]}:{value[1]}"

    def to_state(self, value: Any, scope: Scope) -> Any:
        return (value[0], value[0] + value[1])

    def read(self, state: State, scope: Scope) -> dict[str, Any]:
        start, end = state[self.state]
        return self.assign((int(start), int(end - start)))

    def prepare(self, state: State, scope: Scope) -> None:
        transitions, window = scope.entry.transitions, state.get(self.state)
        pair = isinstance(window, (tuple, list)) and len(window) == 2 and transitions >= 2
        if pair and 0 <= window[0] == window[1] <= transitions:
            # both ends dragged together: the user's start kept, 2 steps (the fewest allowed)
            end = min(window[0] + 2, transitions)
            state[self.state] = (end - 2, end)
        elif not (pair and 0 <= window[0] < window[1] <= transitions):
            state[self.state] = (0, min(16, transitions))

    def drawn(self, scope: Scope) -> bool:
        return scope.entry.transitions >= 2

    def widget_args(self, scope: Scope) -> dict[str, Any]:
        return {"min_value": 0, "max_value": scope.entry.transitions, "help": self.help}

    def caption(self, state: State, scope: Scope) -> str | None:
        start, steps = self.value(self.read(state, scope))
        times: Sequence[float] = scope.entry.times
        n_classes = len(scope.values["classes"])
        per_batch = f"N = {n_classes} × {steps} = {n_classes * steps} examples per batch"
        if steps < 1:  # both slider ends together: the checks say what is wrong
            return f"0 steps; {per_batch}"
        # the maps' axes are the input times; the last step's target lies one step later
        return (
            f"{plural(steps, 'step')}: inputs at t = {times[start]:.3g} … "
            f"{times[start + steps - 1]:.3g}, targets up to {times[start + steps]:.3g}; {per_batch}"
        )


@dataclass(frozen=True, kw_only=True)
class Responses(Multi):
    """Response observables; mass and energy only for compressible Euler."""

    help: str = (
        "The influence panels use SMSE; mass and energy feed the conservation panel "
        "(compressible Euler only). All are computed in one pass."
    )

    def options(self, scope: Scope) -> Sequence[Any]:
        entry: DatasetEntry = scope.entry
        return [r for r in RESPONSES if entry.conserved or r == "smse"]

    def parse(self, raw: str, scope: Scope) -> tuple[str, ...]:
        names = split_list(raw)
        if names:
            parse_responses(names)  # the vocabulary's own check: unknown names
        error = check_responses(scope.entry, names)
        if error:
            raise RequestError(error)
        return tuple(names)

    def reset(self, scope: Scope) -> Any:
        return self.options(scope)
