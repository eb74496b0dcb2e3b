"""The dashboard's selection: a frozen dataclass, its URL form, its checks and its requests.

Pure (no streamlit): the sidebar builds a Selection, the URL stores ``to_query()``,
``decode_query`` reads a link back (explaining and replacing every bad value), and
``to_request`` / ``to_requests`` are the one way the dashboard (and ``coherence demo``, which
precomputes ``default_selection(ws).to_request(ws)``) turn a selection into analysis requests.
Names in a selection are directory names relative to ``<workspace>/datasets`` and
``<workspace>/checkpoints``; ``to_request`` resolves them with ``resolve_inside``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from coherence.analysis.request import MAX_EXAMPLES, AnalysisRequest
from coherence.dashboard.checks import (
    check_classes,
    check_group,
    check_responses,
    check_trajectories,
    check_window,
    format_ranges,
    parse_ranges,
    split_list,
)
from coherence.dashboard.workspace_scan import (
    Catalog,
    DatasetEntry,
    ModelGroup,
    class_order,
    scan_workspace,
)
from coherence.errors import RequestError
from coherence.workspace import checkpoints_dir, datasets_dir, resolve_inside, workspace_root

RESPONSES = ("smse", "mass", "energy")
ESTIMATORS = ("subspace", "cg", "euclidean", "krylov")
DEVICES = ("auto", "cpu", "cuda")
# The paper uses 6 test trajectories per seed; 2 keep the demo's precompute within its budget
# on 2 CPU cores, and more are one sidebar pick away.
DEFAULT_BATCHES = 2
DEFAULT_STEPS = 16  # the paper's T = 16 transitions
DEFAULT_DAMPING = 1e-4
DAMPING_RANGE = (1e-12, 1e6)
# What the sidebar's tolerance field accepts, and so what a link may hold: a link must not
# show one value while the widget shows another.
RTOL_RANGE = (1e-8, 0.99)
PAPER_RTOL = {"unet": 1.5e-2, "vit": 5e-2}  # METHOD.md §4, cg
FALLBACK_RTOL = 1e-2
QUERY_KEYS = (
    "data",
    "ckpt",
    "vs",
    "classes",
    "traj",
    "window",
    "resp",
    "est",
    "damping",
    "rtol",
    "device",
)
# How many candidate defaults ``prefer_cached`` asks about: each question may hash the
# candidate's checkpoint files once (the cache key), so a huge workspace is not read whole.
MAX_CACHE_LOOKUPS = 8


@dataclass(frozen=True)
class Selection:
    """What the user looks at; canonical (sorted classes, trajectories, responses) so that one
    set of choices always makes one request and one cache key."""

    dataset: str  # directory name under <workspace>/datasets
    checkpoints: tuple[str, ...]  # group A: names under <workspace>/checkpoints (seeds)
    classes: tuple[str, ...]  # test-split classes, one trajectory of each per batch
    trajectories: tuple[int, ...]  # test trajectory indices, one batch each
    t_start: int  # first transition of the window
    n_steps: int  # transitions per batch (T); N = classes × T
    responses: tuple[str, ...] = ("smse",)  # smse first fills the influence panels
    estimator: str = "subspace"  # subspace | krylov | cg | euclidean
    damping: float = DEFAULT_DAMPING  # λ in η + λI
    rtol: float | None = None  # cg only
    device: str = "auto"  # auto | cpu | cuda
    compare: tuple[str, ...] = ()  # group B for compare mode; empty: no compare

    def __post_init__(self) -> None:
        for name in ("checkpoints", "classes", "trajectories", "responses", "compare"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise RequestError(f"Selection.{name}={value!r}: give a tuple of names")
        object.__setattr__(self, "classes", class_order(self.classes))
        object.__setattr__(self, "trajectories", tuple(sorted({int(t) for t in self.trajectories})))
        unknown = [r for r in self.responses if r not in RESPONSES]
        if unknown:
            raise RequestError(f"responses {unknown}: choose among {', '.join(RESPONSES)}")
        object.__setattr__(self, "responses", tuple(r for r in RESPONSES if r in self.responses))
        object.__setattr__(self, "checkpoints", tuple(dict.fromkeys(self.checkpoints)))
        object.__setattr__(self, "compare", tuple(dict.fromkeys(self.compare)))
        if self.estimator not in ESTIMATORS:
            raise RequestError(
                f"estimator={self.estimator!r}: choose one of {', '.join(ESTIMATORS)}"
            )
        if self.device not in DEVICES:
            raise RequestError(f"device={self.device!r}: choose one of {', '.join(DEVICES)}")
        if not (math.isfinite(self.damping) and self.damping > 0):
            raise RequestError(f"damping={self.damping}: must be a positive number (λ > 0)")
        if self.estimator == "cg":
            if self.rtol is None or not 0 < self.rtol < 1:
                raise RequestError(f"rtol={self.rtol}: cg needs a tolerance in (0, 1)")
        else:
            object.__setattr__(self, "rtol", None)

    # -------------------------------------------------------------------- requests ----

    @property
    def groups(self) -> tuple[tuple[str, ...], ...]:
        """The checkpoint groups shown: (A,) or (A, B) in compare mode."""
        return (self.checkpoints, self.compare) if self.compare else (self.checkpoints,)

    @property
    def n_examples(self) -> int:
        return len(self.classes) * self.n_steps

    def to_request(
        self, workspace: str | os.PathLike | None = None, checkpoints: Sequence[str] | None = None
    ) -> AnalysisRequest:
        """The AnalysisRequest of group A (or of ``checkpoints``), paths resolved inside the
        workspace. Raises RequestError / WorkspacePathError (CoherenceError) when invalid."""
        root = workspace_root(workspace)
        names = self.checkpoints if checkpoints is None else tuple(checkpoints)
        return AnalysisRequest(
            checkpoints=tuple(str(resolve_inside(checkpoints_dir(root), n)) for n in names),
            data=str(resolve_inside(datasets_dir(root), self.dataset)),
            classes=self.classes,
            t_start=self.t_start,
            n_steps=self.n_steps,
            trajectories=self.trajectories,
            responses=self.responses,
            estimator=self.estimator,
            damping=self.damping,
            rtol=self.rtol,
            device=self.device,
            split="test",
            top_eigenvalue=True,
        )

    def to_requests(
        self, workspace: str | os.PathLike | None = None
    ) -> tuple[AnalysisRequest, ...]:
        """One request per checkpoint group (compare mode: two)."""
        return tuple(self.to_request(workspace, group) for group in self.groups)

    # ------------------------------------------------------------------------- URL ----

    def to_query(self) -> dict[str, str]:
        """The URL form: short keys, comma lists, ranges for trajectories, exact floats."""
        query = {
            "data": self.dataset,
            "ckpt": ",".join(self.checkpoints),
            "classes": ",".join(self.classes),
            "traj": format_ranges(self.trajectories),
            "window": f"{self.t_start}:{self.n_steps}",
            "resp": ",".join(self.responses),
            "est": self.estimator,
            "damping": repr(float(self.damping)),
            "device": self.device,
        }
        if self.rtol is not None:
            query["rtol"] = repr(float(self.rtol))
        if self.compare:
            query["vs"] = ",".join(self.compare)
        return query


def describe(selection: Selection) -> str:
    """One line for captions: what the analysis covers."""
    return (
        f"{len(selection.checkpoints)} seed(s) × {len(selection.trajectories)} batch(es) "
        f"(trajectories {format_ranges(selection.trajectories)}), N = "
        f"{len(selection.classes)} classes × {selection.n_steps} steps = "
        f"{selection.n_examples}, {selection.estimator}, λ = {selection.damping:g}"
    )


_FIELD_NAMES = {
    "dataset": "dataset",
    "checkpoints": "seeds",
    "compare": "comparison",
    "classes": "classes",
    "trajectories": "trajectories",
    "t_start": "window start",
    "n_steps": "window steps",
    "responses": "responses",
    "estimator": "estimator",
    "damping": "damping λ",
    "rtol": "cg tolerance",
    "device": "device",
}


def _field_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def differences(old: Selection, new: Selection) -> list[str]:
    """'damping λ 0.0001 → 0.001' for every field in which ``new`` differs from ``old``."""
    out = []
    for name, label in _FIELD_NAMES.items():
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            out.append(f"{label} {_field_text(before)} → {_field_text(after)}")
    return out


# ------------------------------------------------------------------------ defaults -------


def default_rtol(arch: str) -> float:
    """The paper's cg tolerance for the architecture (1.5e-2 UNet, 5e-2 ViT)."""
    return PAPER_RTOL.get(arch, FALLBACK_RTOL)


def default_window(entry: DatasetEntry, n_classes: int) -> tuple[int, int]:
    """0:16 when the trajectories have ≥ 17 snapshots, else every transition; shortened so
    that N = classes × steps stays within the engine's limit."""
    steps = min(DEFAULT_STEPS, entry.transitions, MAX_EXAMPLES // max(n_classes, 1))
    return 0, max(steps, 1)


def group_defaults(entry: DatasetEntry, group: ModelGroup) -> Selection | None:
    """The default view of one dataset with one model group: its first (max 3) classes,
    every seed of the group, trajectories 0..min(DEFAULT_BATCHES, n_test) − 1, window 0:16
    (or all), SMSE plus mass and energy for compressible Euler; None if nothing fits."""
    classes = entry.classes[:3]
    n_test = entry.n_test(classes)
    if not classes or n_test == 0:
        return None
    t_start, n_steps = default_window(entry, len(classes))
    if len(classes) * n_steps < 2:
        return None
    return Selection(
        dataset=entry.name,
        checkpoints=group.checkpoints,
        classes=classes,
        trajectories=tuple(range(min(DEFAULT_BATCHES, n_test))),
        t_start=t_start,
        n_steps=n_steps,
        responses=RESPONSES if entry.conserved else ("smse",),
    )


Cached = Callable[[Selection], bool]  # whether a selection's analysis is in the cache


def _candidates(catalog: Catalog, names: Sequence[str]) -> Iterator[Selection]:
    """The default view of each (dataset, model group), datasets in ``names`` order, groups
    in the catalog's order (trained on the dataset, then UNet, ViT, others)."""
    for name in names:
        entry = catalog.dataset(name)
        for group in catalog.groups(entry) if entry is not None else ():
            selection = group_defaults(entry, group)
            if selection is not None:
                yield selection


def prefer_cached(candidates: Iterator[Selection], cached: Cached | None) -> Selection | None:
    """The first candidate whose analysis is cached (among the first MAX_CACHE_LOOKUPS),
    else the first candidate. Why: the catalog's order is by name, so a planted or
    half-made model group could otherwise become the first page in place of the result
    everyone was meant to see."""
    first = None
    for i, selection in enumerate(candidates):
        first = first or selection
        if cached is None or i >= MAX_CACHE_LOOKUPS:
            break
        if cached(selection):
            return selection
    return first


def dataset_defaults(
    catalog: Catalog,
    dataset: str,
    group: ModelGroup | None = None,
    *,
    cached: Cached | None = None,
) -> Selection | None:
    """The default view of one dataset (``group_defaults``): with ``group``, or else the
    first model group whose default analysis is cached (``prefer_cached``), or else the first
    group; None if nothing fits it."""
    entry = catalog.dataset(dataset)
    if entry is None:
        return None
    if group is not None:
        return group_defaults(entry, group)
    return prefer_cached(_candidates(catalog, [entry.name]), cached)


def default_selection(
    workspace: str | os.PathLike | Catalog | None = None, *, cached: Cached | None = None
) -> Selection | None:
    """The first page: among every (dataset, model group) default, ``ce_demo`` first, the
    first one whose analysis is cached (when ``cached`` can tell), else the first one; None
    for a workspace without one. ``coherence demo`` precomputes the uncached answer, which
    is then the cached one."""
    catalog = workspace if isinstance(workspace, Catalog) else scan_workspace(workspace)
    names = sorted((d.name for d in catalog.datasets), key=lambda n: (n != "ce_demo", n))
    return prefer_cached(_candidates(catalog, names), cached)


# ------------------------------------------------------------------------- decode --------


def _last(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else None
    return None if value is None else str(value)


# The URL form is ASCII (``to_query`` writes it): Python's float() and int() would also take
# "１", "٣", "1_0" or " 1 ", which no link of ours holds.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?|[+-]?(?:nan|inf)")
_WINDOW = re.compile(r"([0-9]{1,9}):([0-9]{1,9})")


def _float(text: str) -> float:
    if not _NUMBER.fullmatch(text):
        raise RequestError("not a number")
    value = float(text)
    if not math.isfinite(value):
        raise RequestError("not a finite number")
    return value


def decode_query(
    params: Mapping[str, Any],
    catalog: Catalog,
    *,
    cuda_available: bool = False,
    cached: Cached | None = None,
) -> tuple[Selection | None, list[str]]:
    """A Selection from URL parameters plus one warning per value that was invalid and
    replaced by its default (never raises). None when the workspace offers no selection.
    ``cached`` lets the defaults prefer analyses already computed (``default_selection``)."""
    warnings: list[str] = []
    base = default_selection(catalog, cached=cached)
    if base is None:
        if any(_last(params, k) for k in QUERY_KEYS):
            warnings.append(
                "the link names an analysis, but this workspace has no dataset with a "
                "compatible checkpoint to show it"
            )
        return None, warnings

    def warn(key: str, raw: str, why: str, instead: str) -> None:
        shown = raw if len(raw) <= 60 else raw[:57] + "…"
        why = why if len(why) <= 200 else why[:197] + "…"
        warnings.append(f"URL parameter {key}={shown!r}: {why}; using {instead} instead")

    raw = _last(params, "data")
    if raw is not None and raw != base.dataset:
        if catalog.dataset(raw) is None:
            names = ", ".join(d.name for d in catalog.datasets)
            warn("data", raw, f"no such dataset (the workspace has {names})", base.dataset)
        elif (defaults := dataset_defaults(catalog, raw, cached=cached)) is None:
            warn("data", raw, "no checkpoint in the workspace fits this dataset", base.dataset)
        else:
            base = defaults
    entry = catalog.dataset(base.dataset)
    values: dict[str, Any] = {f.name: getattr(base, f.name) for f in fields(Selection)}

    def group(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = _last(params, key)
        if raw is None:
            return default
        names = split_list(raw)
        error = check_group(catalog, entry, names)
        if error:
            warn(key, raw, error, ",".join(default) or "no comparison")
            return default
        order = catalog.group_of(entry, names[0]).checkpoints
        return tuple(n for n in order if n in names)

    values["checkpoints"] = group("ckpt", base.checkpoints)
    compare = group("vs", ())
    if compare and compare == values["checkpoints"]:
        warn("vs", _last(params, "vs"), "it repeats the first group", "no comparison")
        compare = ()
    values["compare"] = compare

    if (raw := _last(params, "classes")) is not None:
        classes = class_order(split_list(raw))
        error = check_classes(entry, classes)
        if error:
            warn("classes", raw, error, ",".join(base.classes))
        else:
            values["classes"] = classes
    classes = values["classes"]
    n_test = entry.n_test(classes)
    if (raw := _last(params, "traj")) is not None:
        try:
            trajectories = parse_ranges(raw, n_test)
            error = check_trajectories(entry, classes, trajectories)
        except RequestError as exc:
            error = str(exc)
        if error:
            fallback = tuple(range(min(DEFAULT_BATCHES, n_test)))
            warn("traj", raw, error, format_ranges(fallback))
            values["trajectories"] = fallback
        else:
            values["trajectories"] = trajectories
    elif any(t >= n_test for t in values["trajectories"]):
        values["trajectories"] = tuple(range(min(DEFAULT_BATCHES, n_test)))

    window = default_window(entry, len(classes))
    raw = _last(params, "window")
    if raw is not None:
        if match := _WINDOW.fullmatch(raw):
            start, steps = int(match.group(1)), int(match.group(2))
            error = check_window(entry, len(classes), start, steps)
        else:
            error = "expected START:STEPS (two whole numbers), e.g. 0:16"
        if error:
            warn("window", raw, error, f"{window[0]}:{window[1]}")
        else:
            window = (start, steps)
    values["t_start"], values["n_steps"] = window

    if (raw := _last(params, "resp")) is not None:
        names = split_list(raw)
        unknown = [r for r in names if r not in RESPONSES]
        error = (
            f"unknown response(s) {', '.join(unknown)} (choose among {', '.join(RESPONSES)})"
            if unknown
            else check_responses(entry, names)
        )
        if error:
            warn("resp", raw, error, ",".join(base.responses))
        else:
            values["responses"] = tuple(names)

    if (raw := _last(params, "est")) is not None:
        if raw in ESTIMATORS:
            values["estimator"] = raw
        else:
            warn("est", raw, f"choose one of {', '.join(ESTIMATORS)}", base.estimator)

    if (raw := _last(params, "damping")) is not None:
        try:
            damping = _float(raw)
            if not DAMPING_RANGE[0] <= damping <= DAMPING_RANGE[1]:
                raise RequestError(f"λ must lie in [{DAMPING_RANGE[0]:g}, {DAMPING_RANGE[1]:g}]")
            values["damping"] = damping
        except RequestError as exc:
            warn("damping", raw, str(exc), repr(DEFAULT_DAMPING))

    arch = catalog.checkpoint(values["checkpoints"][0]).arch
    rtol = default_rtol(arch)
    if (raw := _last(params, "rtol")) is not None:
        try:
            value = _float(raw)
            if not RTOL_RANGE[0] <= value <= RTOL_RANGE[1]:
                raise RequestError(
                    f"the cg tolerance must lie in [{RTOL_RANGE[0]:g}, {RTOL_RANGE[1]:g}]"
                )
            rtol = value
        except RequestError as exc:
            warn("rtol", raw, str(exc), repr(rtol))
    values["rtol"] = rtol if values["estimator"] == "cg" else None

    if (raw := _last(params, "device")) is not None:
        if raw not in DEVICES:
            warn("device", raw, f"choose one of {', '.join(DEVICES)}", "auto")
        elif raw == "cuda" and not cuda_available:
            warn("device", raw, "no CUDA GPU is visible on the server", "auto")
        else:
            values["device"] = raw
    return Selection(**values), warnings


def from_request(catalog: Catalog, request: Mapping[str, Any]) -> Selection | None:
    """The selection that makes ``request`` (a stored analysis request as a dict), or None
    when its dataset or a checkpoint is not (or no longer) in the workspace's catalog, or
    its fields are not a dashboard selection (another split, no top eigenvalue)."""

    def inside(path: Any, parent: os.PathLike) -> str | None:
        """The directory name of ``path`` when it lies directly in ``parent``."""
        real = os.path.realpath(str(path))
        if os.path.dirname(real) != os.path.realpath(parent):
            return None
        return os.path.basename(real)

    try:
        name = inside(request["data"], datasets_dir(catalog.root))
        entry = catalog.dataset(name) if name else None
        names = []
        for path in request["checkpoints"]:
            found = inside(path, checkpoints_dir(catalog.root))
            if found is None or catalog.checkpoint(found) is None:
                return None
            names.append(found)
        if entry is None or request.get("split", "test") != "test":
            return None
        if not request.get("top_eigenvalue", True):
            return None
        selection = Selection(
            dataset=entry.name,
            checkpoints=tuple(names),
            classes=tuple(request["classes"]),
            trajectories=tuple(int(t) for t in request["trajectories"]),
            t_start=int(request["t_start"]),
            n_steps=int(request["n_steps"]),
            responses=tuple(request["responses"]),
            estimator=str(request["estimator"]),
            damping=float(request["damping"]),
            rtol=None if request.get("rtol") is None else float(request["rtol"]),
            device=str(request.get("device", "auto")),
        )
    except (KeyError, TypeError, ValueError):  # RequestError is a ValueError
        return None
    if check_group(catalog, entry, selection.checkpoints):
        return None
    return selection


def with_dataset(
    catalog: Catalog, selection: Selection, dataset: str, *, cached: Cached | None = None
) -> Selection:
    """The defaults of another dataset, keeping the estimator settings that still apply."""
    defaults = dataset_defaults(catalog, dataset, cached=cached)
    if defaults is None:
        return selection
    return replace(
        defaults,
        estimator=selection.estimator,
        damping=selection.damping,
        rtol=selection.rtol,
        device=selection.device,
    )
