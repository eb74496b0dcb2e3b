"""The sidebar's controls as one table, and the walks over it.

Each row of ``CONTROLS`` ties a Selection field to its URL key, its session-state key, its
default, how a link's text is parsed and written, and its widget. Reading a link
(``read_query``, i.e. ``selection.decode_query``), writing one (``encode``, i.e.
``Selection.to_query``), the sidebar's session state (``load_state``, ``prepare_state``,
``read_state``) and its drawing (``walk``) go through the rows in order, each row seeing the
fields of the rows before it. A new control is one row (plus its Selection field); the rows
whose rules are their own (dataset, model groups, window, trajectories, responses) are kinds
in ``control_rows``.

Pure (no streamlit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coherence.analysis.vocabulary import MAX_DEPTH, default_depth, rtol_out_of_reach
from coherence.dashboard.checks import earlier_epochs, final_epoch
from coherence.dashboard.control_kinds import Choice, Control, Number, Scope, State
from coherence.dashboard.control_rows import (
    RESPONSE_LABELS,
    Classes,
    Dataset,
    Group,
    Responses,
    Trajectories,
    Window,
)
from coherence.dashboard.selection import (
    DAMPING_RANGE,
    DEFAULT_DAMPING,
    DEFAULT_ESTIMATOR,
    DEPTH_ESTIMATORS,
    DEVICES,
    ESTIMATORS,
    RTOL_RANGE,
    Cached,
    Selection,
    default_rtol,
    default_selection,
    estimator_default_depth,
)
from coherence.dashboard.workspace_scan import Catalog
from coherence.errors import RequestError

ESTIMATOR_LABELS = {  # short enough for the sidebar's width; the help says what each does
    "subspace": "subspace (paper v1)",
    "krylov": "krylov",
    "ekfac-krylov": "ekfac-krylov (default)",
    "ekfac": "ekfac (fastest)",
    "cg": "cg (paper v2)",
    "euclidean": "euclidean (M = I)",
}


class Device(Choice):
    """Where the job computes; CUDA only when the server sees a GPU."""

    def parse(self, raw: str, scope: Scope) -> Any:
        value = super().parse(raw, scope)
        if value == "cuda" and not scope.cuda_available:
            raise RequestError("no CUDA GPU is visible on the server")
        return value


def device_labels(scope: Scope) -> Callable[[str], str]:
    def label(device: str) -> str:
        if device == "auto":
            return f"auto (→ {'cuda' if scope.cuda_available else 'cpu'})"
        if device == "cuda" and not scope.cuda_available:
            return "cuda (no GPU visible)"
        return device

    return label


class Tolerance(Number):
    """cg's relative tolerance: only for cg; its default is the paper's for the model."""

    def active(self, values: Mapping[str, Any]) -> bool:
        return values.get("estimator") == "cg"

    def reset(self, scope: Scope) -> float:
        return default_rtol(scope.arch)

    absent = fallback = reset

    def to_state(self, value: Any, scope: Scope) -> Any:
        return self.reset(scope) if value is None else float(value)

    def caption(self, state: State, scope: Scope) -> str | None:
        value = state.get(self.state)
        if not self.active(scope.values) or not isinstance(value, int | float):
            return None
        why = rtol_out_of_reach(float(value))
        return f":material/warning: {why}." if why else None


@dataclass(frozen=True, kw_only=True)
class Damping(Number):
    """λ, which euclidean (M = I) does not use: for it the widget is greyed out at the
    default λ (``Selection`` holds that λ for euclidean), so every euclidean selection is the
    one result the Sensitivity sweep computes too; a changed λ had recomputed the same
    influence under a new key. The λ chosen before is kept aside and comes back with the
    next estimator that uses it."""

    ignored_by: str = "euclidean"

    def _ignored(self, scope: Scope) -> bool:
        return scope.values.get("estimator") == self.ignored_by

    @property
    def _kept_key(self) -> str:
        return f"{self.state}_kept"  # the λ chosen before switching to euclidean

    def parse(self, raw: str, scope: Scope) -> float:
        value = super().parse(raw, scope)
        if self._ignored(scope) and value != self.default:  # said, then the default used
            raise RequestError(f"{self.ignored_by} (M = I) does not use λ")
        return value

    def load(self, state: State, scope: Scope) -> None:
        super().load(state, scope)
        state.pop(self._kept_key, None)  # a new selection: nothing to bring back

    def prepare(self, state: State, scope: Scope) -> None:
        super().prepare(state, scope)
        if self._ignored(scope):
            if state[self.state] != self.default:
                state[self._kept_key] = state[self.state]
            state[self.state] = self.default
        elif self._kept_key in state:
            state[self.state] = state.pop(self._kept_key)

    def read(self, state: State, scope: Scope) -> dict[str, Any]:
        return self.assign(self.default if self._ignored(scope) else float(state[self.state]))

    def widget_args(self, scope: Scope) -> dict[str, Any]:
        args = super().widget_args(scope)
        if self._ignored(scope):
            args["disabled"] = True
            args["help"] = (
                f"euclidean (M = I) does not use λ: its influence is the plain gradient dot "
                f"product, computed once at λ = {self.default:g} (only the top eigenvalue of "
                "η + λI carries it)."
            )
        return args


@dataclass(frozen=True, kw_only=True)
class Depth(Control):
    """The Krylov depth (blocks of the basis): only for the estimators that have one. Its
    value follows the estimator: a depth chosen for one estimator is not carried to another
    that has one (ekfac-krylov's 1 would make krylov the span(G) solve), so switching between
    them resets it to the new one's default."""

    bounds: tuple[int, int] = (1, MAX_DEPTH)
    widget: str = "number_input"

    def active(self, values: Mapping[str, Any]) -> bool:
        return values.get("estimator") in DEPTH_ESTIMATORS

    def decode(self, raw: str, scope: Scope) -> dict[str, Any]:
        """An estimator without a Krylov depth ignores a link's depth (as the request does)."""
        if not self.active(scope.values):
            return self.assign(None)
        return super().decode(raw, scope)

    def parse(self, raw: str, scope: Scope) -> int:
        lo, hi = self.bounds
        # the length first: int() of thousands of digits raises ValueError, not RequestError
        digits = raw.isascii() and raw.isdigit() and len(raw) <= len(str(hi))
        if not digits or not lo <= int(raw) <= hi:
            raise RequestError(f"the Krylov depth must be a whole number from {lo} to {hi}")
        return int(raw)

    def reset(self, scope: Scope) -> int:
        own = estimator_default_depth(scope.values.get("estimator"))
        return default_depth(DEFAULT_ESTIMATOR) if own is None else own

    def to_state(self, value: Any, scope: Scope) -> Any:
        return self.reset(scope) if value is None else int(value)

    @property
    def _owner_key(self) -> str:
        return f"{self.state}_for"  # the estimator the value was chosen for

    def load(self, state: State, scope: Scope) -> None:
        super().load(state, scope)
        state[self._owner_key] = scope.values.get("estimator")

    def prepare(self, state: State, scope: Scope) -> None:
        value, (lo, hi) = state.get(self.state), self.bounds
        valid = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
        estimator = scope.values.get("estimator")
        if not valid or state.get(self._owner_key) != estimator:
            state[self.state] = self.reset(scope)
        state[self._owner_key] = estimator

    def read(self, state: State, scope: Scope) -> dict[str, Any]:
        return self.assign(int(state[self.state]))

    def fallback_text(self, scope: Scope) -> str:
        if self.fallback(scope) is not None:
            return super().fallback_text(scope)
        return f"the estimator's default depth ({self.reset(scope)})"

    def widget_args(self, scope: Scope) -> dict[str, Any]:
        lo, hi = self.bounds
        return {"min_value": lo, "max_value": hi, "step": 1, "format": "%d", "help": self.help}


FINAL_WEIGHTS = "final"  # the Epoch control's value for the checkpoints' own weights


@dataclass(frozen=True, kw_only=True)
class Epoch(Choice):
    """Which weights of the chosen seeds are analysed: their own (final) or a training
    snapshot every seed of every shown group kept (``coherence train --keep-epochs``), so a
    snapshot opens in every panel, not only in the Training dynamics maps. Drawn only where
    such a snapshot exists; a link's ``epoch=4``; the last epoch is the final weights."""

    default: str = FINAL_WEIGHTS
    url_rank: int = 1

    def options(self, scope: Scope) -> Sequence[Any]:
        groups = [scope.values.get("checkpoints") or ()]
        if scope.values.get("compare"):
            groups.append(scope.values["compare"])
        shared = set.intersection(*(set(earlier_epochs(scope.catalog, g)) for g in groups))
        return (FINAL_WEIGHTS, *(str(e) for e in sorted(shared)))

    def parse(self, raw: str, scope: Scope) -> int | None:
        final = final_epoch(scope.catalog, scope.values.get("checkpoints") or ())
        if raw.isascii() and raw.isdigit() and len(raw) <= 6 and int(raw) == final:
            return None  # the last epoch's snapshot is the checkpoints' own weights
        options = self.options(scope)
        if raw not in options[1:]:
            offered = ", ".join(options[1:]) or "none (these checkpoints keep no snapshot)"
            raise RequestError(f"no snapshot of that epoch in every seed; epochs kept: {offered}")
        return int(raw)

    def text(self, value: Any) -> str | None:
        return None if value is None else str(value)

    def fallback_text(self, scope: Scope) -> str:
        return "the final weights"

    def to_state(self, value: Any, scope: Scope) -> Any:
        return FINAL_WEIGHTS if value is None else str(value)

    def read(self, state: State, scope: Scope) -> dict[str, Any]:
        value = state[self.state]
        return self.assign(None if value == FINAL_WEIGHTS else int(value))

    def drawn(self, scope: Scope) -> bool:
        return len(self.options(scope)) > 1


def epoch_labels(scope: Scope) -> Callable[[str], str]:
    def label(option: str) -> str:
        return "final weights" if option == FINAL_WEIGHTS else f"epoch {option} (snapshot)"

    return label


CONTROLS: tuple[Control, ...] = (
    Dataset(key="data", field="dataset", state="sb_dataset", label="Dataset"),
    Group(key="ckpt", field="checkpoints", state="sb_ckpts", label="Seeds", suffix=""),
    Group(
        key="vs",
        field="compare",
        state="sb_ckpts_b",
        label="Seeds (second group)",
        suffix="_b",
        url_rank=2,
    ),
    Epoch(
        key="epoch",
        field="epoch",
        state="sb_epoch",
        label="Weights",
        labels=epoch_labels,
        help="The seeds' own weights (final), or the snapshot of an earlier training epoch "
        "that every seed kept (`coherence train --keep-epochs`): every panel then reads that "
        "epoch's weights. The Training dynamics tab shows all epochs at once.",
    ),
    Classes(key="classes", field="classes", state="sb_classes", label="Classes", divider=True),
    Trajectories(
        key="traj",
        field="trajectories",
        state="sb_traj",
        label="Test trajectories (one batch each)",
    ),
    Window(
        key="window",
        field="t_start",  # and n_steps
        state="sb_window",
        label="Time window (snapshot indices)",
    ),
    Responses(
        key="resp",
        field="responses",
        state="sb_resp",
        label="Response observables",
        labels=lambda scope: RESPONSE_LABELS.get,
        divider=True,
    ),
    Choice(
        key="est",
        field="estimator",
        state="sb_est",
        label="Estimator of M⁻¹",
        choices=ESTIMATORS,
        default=DEFAULT_ESTIMATOR.value,
        labels=lambda scope: ESTIMATOR_LABELS.get,
        help="ekfac-krylov (default): exact Galerkin solve on the span of the gradients "
        "and of their EK-FAC-preconditioned images, plus EK-FAC's estimate of what it leaves "
        "out (closest to the full solve per product: Pearson 0.94–0.98 against it on small "
        "models, where subspace reaches 0.65–0.82); "
        "subspace: the same on the span of the gradients alone (the solve of the paper's "
        "first version, v1); krylov: the same in span{G, ηG, η²G, η³G} (≈ 4× the cost); "
        "cg: conjugate gradients to a relative tolerance, the solve of the paper's second "
        "version (v2: rtol 1.5e-2 UNet, 5e-2 ViT), from a Krylov start here; "
        "ekfac: the Kronecker-factored approximation alone (fast, no residual); "
        "euclidean: M = I.",
    ),
    Damping(
        key="damping",
        field="damping",
        state="sb_damping",
        label="Damping λ",
        bounds=DAMPING_RANGE,
        what="λ",
        default=DEFAULT_DAMPING,
        decades=True,
        help="λ in η + λI (default 1e-4, the paper's). − and + divide and multiply by 10; "
        "type any other value.",
    ),
    Tolerance(
        key="rtol",
        field="rtol",
        state="sb_rtol",
        label="CG relative tolerance",
        bounds=RTOL_RANGE,
        what="the cg tolerance",
        step=1e-3,
        url_rank=1,
        help="Paper: 1.5e-2 for UNet, 5e-2 for ViT.",
    ),
    Depth(
        key="depth",
        field="depth",
        state="sb_depth",
        label="Krylov depth (blocks)",
        url_rank=1,
        help="How many Krylov blocks the solve is exact on: more is closer to the full "
        "solve and slower. ekfac-krylov: default 1; use 4 for the mass and energy maps (on "
        "small models their Pearson correlation with the full solve rises from about 0–0.6 "
        "and 0.2–0.7 to 0.4–0.8 and 0.5–0.8; SMSE is close already) at about 5× the time. "
        "krylov: default 4. cg: the depth of its deflated start.",
    ),
    Device(
        key="device",
        field="device",
        state="sb_device",
        label="Device",
        choices=DEVICES,
        default="auto",
        labels=device_labels,
        help="Where the background job computes; auto uses a GPU when one is visible.",
    ),
)
QUERY_KEYS = tuple(control.key for control in CONTROLS)


# ------------------------------------------------------------------------------ URL ----


def _last(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else None
    return None if value is None else str(value)


def _warning(key: str, raw: str, why: str, instead: str) -> str:
    shown = raw if len(raw) <= 60 else raw[:57] + "…"
    why = why if len(why) <= 200 else why[:197] + "…"
    return f"URL parameter {key}={shown!r}: {why}; using {instead} instead"


def read_query(
    params: Mapping[str, Any],
    catalog: Catalog,
    *,
    cuda_available: bool = False,
    cached: Cached | None = None,
) -> tuple[Selection | None, list[str]]:
    """A Selection from URL parameters plus one warning per value that was invalid and
    replaced by its default (never raises). None when the workspace offers no selection.
    ``cached`` lets the defaults prefer analyses already computed (``default_selection``)."""
    base = default_selection(catalog, cached=cached)
    if base is None:
        if any(_last(params, k) for k in QUERY_KEYS):
            return None, [
                "the link names an analysis, but this workspace has no dataset with a "
                "compatible checkpoint to show it"
            ]
        return None, []
    warnings: list[str] = []
    scope = Scope(catalog, dict(vars(base)), cuda_available, cached)
    for control in CONTROLS:
        raw = _last(params, control.key)
        if raw is None:
            scope.values.update(control.assign(control.absent(scope)))
            continue
        try:
            update = control.decode(raw, scope)
        except RequestError as exc:
            warnings.append(_warning(control.key, raw, str(exc), control.fallback_text(scope)))
            update = control.assign(control.fallback(scope))
        scope.values.update(update)
    return Selection(**scope.values), warnings


def encode(selection: Selection) -> dict[str, str]:
    """The URL form: short keys, comma lists, ranges for trajectories, exact floats; the
    keys a link always holds first, in table order."""
    values = vars(selection)
    query = {}
    for control in sorted(CONTROLS, key=lambda c: c.url_rank):
        text = control.text(control.value(values))
        if text is not None:
            query[control.key] = text
    return query


# ---------------------------------------------------------------------- session state ----


def load_state(state: State, selection: Selection, catalog: Catalog) -> None:
    """Put a selection into the widgets' session state (before they are drawn)."""
    scope = Scope(catalog, dict(vars(selection)))
    for control in CONTROLS:
        control.load(state, scope)


Visit = Callable[[Control, Scope], None]


def walk(
    state: State, catalog: Catalog, visit: Visit | None = None, *, cuda_available: bool = False
) -> dict[str, Any]:
    """The Selection fields the session state describes, read row by row; ``visit`` sees
    each active control (with the fields read before it) before its own fields are read, so
    it may repair or draw it first. An inactive control's field is None."""
    scope = Scope(catalog, {}, cuda_available)
    for control in CONTROLS:
        active = control.active(scope.values)
        if active and visit is not None:
            visit(control, scope)
        scope.values.update(control.read(state, scope) if active else control.assign(None))
    return scope.values


def prepare_state(state: State, catalog: Catalog) -> None:
    """Make the session state valid for the workspace as it is now (it may have changed
    since the values were chosen): each stale value is replaced by the control's reset."""
    walk(state, catalog, lambda control, scope: control.prepare(state, scope))


def read_state(state: State, catalog: Catalog) -> Selection:
    """The Selection the session state describes (raises when it describes none)."""
    return Selection(**walk(state, catalog))
