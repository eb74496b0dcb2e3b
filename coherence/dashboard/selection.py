"""The dashboard's selection: a frozen dataclass, its URL form, its checks and its requests.

Pure (no streamlit): the sidebar builds a Selection, the URL stores ``to_query()``,
``decode_query`` reads a link back (explaining and replacing every bad value; both walk the
table in ``controls``), and ``to_request`` / ``to_requests`` are the one way the dashboard
(and ``coherence demo``, which precomputes ``default_selection(ws).to_request(ws)``) turn a
selection into analysis requests.
Names in a selection are directory names relative to ``<workspace>/datasets`` and
``<workspace>/checkpoints``; ``to_request`` resolves them with ``resolve_inside``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from coherence.analysis.estimators import Estimator
from coherence.analysis.observables import Response
from coherence.analysis.request import MAX_EXAMPLES, AnalysisRequest, stored_depth
from coherence.analysis.vocabulary import (
    DEFAULT_ESTIMATOR,
    PAPER_RTOL,
    default_depth,
    parse_estimator,
)
from coherence.dashboard.checks import (
    final_epoch,
    problems,
    request_problem,
)
from coherence.dashboard.workspace_scan import (
    Catalog,
    DatasetEntry,
    ModelGroup,
    class_order,
    scan_workspace,
)
from coherence.errors import CoherenceError, RequestError
from coherence.surrogates import snapshots
from coherence.wording import format_ranges, plural
from coherence.workspace import checkpoints_dir, datasets_dir, resolve_inside, workspace_root

RESPONSES = tuple(r.value for r in Response)  # smse, mass, energy
ESTIMATORS = tuple(e.value for e in Estimator)  # subspace, cg, euclidean, krylov, ekfac, …
DEVICES = ("auto", "cpu", "cuda")
# The estimators whose Krylov basis has a depth (cg: its deflated start's), and so a depth
# control; every other estimator ignores it.
DEPTH_ESTIMATORS = ("krylov", "ekfac-krylov", "cg")
# The paper uses 6 test trajectories per seed; 1 keeps the demo's precompute (with the default
# ekfac-krylov estimator) within its 10-minute budget on 2 CPU cores, the spread over the 3
# seeds still shows, and more batches are one sidebar pick away.
DEFAULT_BATCHES = 1
DEFAULT_STEPS = 16  # the paper's T = 16 transitions
DEFAULT_DAMPING = 1e-4
DAMPING_RANGE = (1e-12, 1e6)
# What the sidebar's tolerance field accepts, and so what a link may hold: a link must not
# show one value while the widget shows another.
RTOL_RANGE = (1e-8, 0.99)
FALLBACK_RTOL = 1e-2
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
    estimator: str = DEFAULT_ESTIMATOR.value  # ekfac-krylov | subspace | krylov | cg | …
    damping: float = DEFAULT_DAMPING  # λ in η + λI
    rtol: float | None = None  # cg only
    device: str = "auto"  # auto | cpu | cuda
    compare: tuple[str, ...] = ()  # group B for compare mode; empty: no compare
    depth: int | None = None  # Krylov blocks (DEPTH_ESTIMATORS); None: the estimator's default
    epoch: int | None = None  # the training snapshot analysed (epochs/NNNN); None: final weights

    def __post_init__(self) -> None:
        for name in ("checkpoints", "classes", "trajectories", "responses", "compare"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise RequestError(f"Selection.{name}={value!r}: give a tuple of names")
        object.__setattr__(self, "classes", class_order(self.classes))
        object.__setattr__(self, "trajectories", tuple(sorted({int(t) for t in self.trajectories})))
        self._check_settings()
        object.__setattr__(self, "responses", tuple(r for r in RESPONSES if r in self.responses))
        object.__setattr__(self, "checkpoints", tuple(dict.fromkeys(self.checkpoints)))
        object.__setattr__(self, "compare", tuple(dict.fromkeys(self.compare)))
        if self.epoch is not None and (
            isinstance(self.epoch, bool) or not isinstance(self.epoch, int) or self.epoch < 1
        ):
            raise RequestError(f"Selection.epoch={self.epoch!r}: give an epoch ≥ 1, or None")
        if self.estimator != "cg":
            object.__setattr__(self, "rtol", None)
        if self.estimator == "euclidean":  # M = I: λ unused, one selection per result
            object.__setattr__(self, "damping", DEFAULT_DAMPING)
        # canonical: None stands for the estimator's default (a link without depth, and one
        # selection per request key)
        default = estimator_default_depth(self.estimator)
        if default is None or self.depth == default:
            object.__setattr__(self, "depth", None)

    def _check_settings(self) -> None:
        """The request's rules on the estimator settings (one validator: the request).
        Empty responses and CUDA without a GPU are the page's ``problems``, not errors."""
        cg = self.estimator == "cg"
        error = request_problem(
            responses=self.responses or ("smse",),
            estimator=self.estimator,
            damping=self.damping,
            rtol=self.rtol if cg else None,
            depth=self.depth if self.estimator in DEPTH_ESTIMATORS else None,
            device="auto" if self.device == "cuda" else self.device,
        )
        if error:
            tolerance = f", rtol={self.rtol} (cg needs a tolerance in (0, 1))" if cg else ""
            depth = f", depth={self.depth!r}" if self.depth is not None else ""
            raise RequestError(
                f"selection estimator={self.estimator!r}, damping={self.damping:g}{tolerance}"
                f"{depth}, device={self.device!r}: {error}"
            )

    @property
    def resolved_depth(self) -> int | None:
        """The Krylov depth the request uses (None: the estimator has none)."""
        return estimator_default_depth(self.estimator) if self.depth is None else self.depth

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
            checkpoints=tuple(
                str(resolve_inside(checkpoints_dir(root), self.weights(n))) for n in names
            ),
            data=str(resolve_inside(datasets_dir(root), self.dataset)),
            classes=self.classes,
            t_start=self.t_start,
            n_steps=self.n_steps,
            trajectories=self.trajectories,
            responses=self.responses,
            estimator=self.estimator,
            damping=self.damping,
            rtol=self.rtol,
            depth=self.depth,
            device=self.device,
            split="test",
            top_eigenvalue=True,
        )

    def rollout_spec(
        self, workspace: str | os.PathLike | None = None, checkpoints: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """The rollout job of group A (or of ``checkpoints``): what the Rollout panel shows
        and `coherence study` precomputes (``coherence.cache.tasks.ROLLOUT``)."""
        from coherence.cache.tasks import rollout_spec

        root = workspace_root(workspace)
        names = self.checkpoints if checkpoints is None else tuple(checkpoints)
        return rollout_spec(
            [resolve_inside(checkpoints_dir(root), self.weights(n)) for n in names],
            resolve_inside(datasets_dir(root), self.dataset),
            self.classes,
            self.trajectories,
        )

    def weights(self, name: str) -> str:
        """Where checkpoint ``name``'s analysed weights lie under <workspace>/checkpoints:
        itself, or its snapshot of ``epoch``."""
        return name if self.epoch is None else snapshot_path_name(name, self.epoch)

    def to_requests(
        self, workspace: str | os.PathLike | None = None
    ) -> tuple[AnalysisRequest, ...]:
        """One request per checkpoint group (compare mode: two)."""
        return tuple(self.to_request(workspace, group) for group in self.groups)

    # ------------------------------------------------------------------------- URL ----

    def to_query(self) -> dict[str, str]:
        """The URL form: short keys, comma lists, ranges for trajectories, exact floats
        (written by the controls' table, ``controls.encode``)."""
        from coherence.dashboard.controls import encode  # it imports this module

        return encode(self)


def estimator_default_depth(estimator: str | None) -> int | None:
    """The Krylov depth an estimator runs at when none is chosen (None: it has no depth)."""
    if estimator not in DEPTH_ESTIMATORS:
        return None
    return default_depth(parse_estimator(estimator))


def describe(selection: Selection) -> str:
    """One line for captions: what the analysis covers."""
    trajectories = format_ranges(selection.trajectories)
    # euclidean uses no damping: a λ beside it read as if it mattered (a walk-through)
    damping = "" if selection.estimator == "euclidean" else f", λ = {selection.damping:g}"
    if selection.estimator == "cg" and selection.rtol is not None:  # what it stopped at
        damping += f", rtol {selection.rtol:g}"
    seeds = plural(len(selection.checkpoints), "seed")
    if selection.compare and len(selection.compare) != len(selection.checkpoints):
        # compare mode: each group's count ("5 seeds" named the first group's alone)
        seeds = f"{len(selection.checkpoints)} and {plural(len(selection.compare), 'seed')}"
    return (
        f"{seeds} × "
        f"{plural(len(selection.trajectories), 'batch', 'batches')} "
        f"({'trajectories ' + trajectories if trajectories else 'no trajectory'}), N = "
        f"{plural(len(selection.classes), 'class', 'classes')} × "
        f"{plural(selection.n_steps, 'step')} = "
        f"{selection.n_examples}, {selection.estimator}{depth_text(selection)}{damping}"
        + ("" if selection.epoch is None else f", weights of epoch {selection.epoch}")
    )


def depth_text(selection: Selection) -> str:
    """' depth 4' after an estimator that has a Krylov depth, its default included: a depth
    chosen for one estimator is not carried to another, so the page always says which."""
    depth = selection.resolved_depth
    return "" if depth is None else f" depth {depth}"


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
    "depth": "Krylov depth",
    "device": "device",
    "epoch": "weights of epoch",
}


def snapshot_path_name(name: str, epoch: int) -> str:
    """The name under <workspace>/checkpoints of checkpoint ``name``'s snapshot of
    ``epoch`` (``<name>/epochs/NNNN``)."""
    return snapshots.snapshot_dir(name, epoch).as_posix()


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
        if name == "depth":  # the depth each runs at: "4 → 2", not "none → 2"
            before, after = old.resolved_depth, new.resolved_depth
            if before is None or after is None:  # an estimator without one: said above
                continue
        if name == "epoch":  # None: the checkpoints' own weights
            before, after = before or "final", after or "final"
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
    """The first page: among every (dataset, model group) default, ``ce_demo`` first, then
    datasets a model group was trained on (a quick-look subset imported beside the full
    class sorted first by name, and opened in place of the data the models learnt), the
    first one whose analysis is cached (when ``cached`` can tell), else the first one; None
    for a workspace without one. ``coherence demo`` precomputes the uncached answer, which
    is then the cached one."""
    catalog = workspace if isinstance(workspace, Catalog) else scan_workspace(workspace)

    def order(name: str) -> tuple[bool, bool, str]:
        trained_here = any(g.trained_here for g in catalog.groups(name))
        return (name != "ce_demo", not trained_here, name)

    names = sorted((d.name for d in catalog.datasets), key=order)
    return prefer_cached(_candidates(catalog, names), cached)


# ------------------------------------------------------------------------- URL -----------


def decode_query(
    params: Mapping[str, Any],
    catalog: Catalog,
    *,
    cuda_available: bool = False,
    cached: Cached | None = None,
) -> tuple[Selection | None, list[str]]:
    """A Selection from URL parameters plus one warning per value that was invalid and
    replaced by its default (never raises); None when the workspace offers no selection.
    The controls' table reads the link (``controls.read_query``)."""
    from coherence.dashboard.controls import read_query  # it imports this module

    return read_query(params, catalog, cuda_available=cuda_available, cached=cached)


def from_request(catalog: Catalog, request: Mapping[str, Any]) -> Selection | None:
    """The selection that makes ``request`` (a stored analysis request as a dict), or None
    when its dataset or a checkpoint is not (or no longer) in the workspace's catalog, or
    its fields are not a dashboard selection (another split, no top eigenvalue).

    Paths are matched by their place in the workspace layout (``datasets/<name>``,
    ``checkpoints/<name>``), so a workspace that was moved, copied or mounted elsewhere (a
    container) still offers its cached analyses; the caller checks that the selection's key
    is the stored one (same files, not merely the same names)."""

    def inside(path: Any, parent: Path) -> str | None:
        """The directory name of ``path`` when it lies directly in ``parent`` or in a folder
        of the layout's name (``parent.name``: the same layout under another root)."""
        real = os.path.realpath(str(path))
        folder = os.path.dirname(real)
        if folder != os.path.realpath(parent) and os.path.basename(folder) != parent.name:
            return None
        return os.path.basename(real)

    try:
        name = inside(request["data"], datasets_dir(catalog.root))
        entry = catalog.dataset(name) if name else None
        names, epochs = [], set()
        for path in request["checkpoints"]:
            path, epoch = snapshots.split_snapshot(os.path.normpath(str(path)))
            found = inside(path, checkpoints_dir(catalog.root))
            if found is None or catalog.checkpoint(found) is None:
                return None
            names.append(found)
            epochs.add(epoch)
        if len(epochs) != 1:  # seeds at different epochs: not a selection the page makes
            return None
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
            depth=stored_depth(request),  # an old deflated-cg record's None means 1
            device=str(request.get("device", "auto")),
            epoch=_shown_epoch(catalog, names, epochs.pop()),
        )
        # a selection the page refuses (one class of several, a trajectory it lacks) is not
        # offered: its click showed "cannot be computed" for a result already computed
        if problems(replace(selection, device="auto"), catalog):
            return None
        # a request the page would not make (euclidean at another λ, cg from a cold start or
        # with another --max-iter, another energy threshold) is not offered: its click would
        # show another analysis, said to be "files changed"
        ignored = ("checkpoints", "data", "device")
        # device auto: a request computed on a GPU is offered on a machine without one
        made = replace(selection, device="auto").to_request(catalog.root).to_dict()
        stored = AnalysisRequest.from_dict(dict(request) | {"device": "auto"}).to_dict()
        if any(made.get(k) != stored.get(k) for k in (made.keys() | stored.keys()) - set(ignored)):
            return None
    except (KeyError, TypeError, ValueError, CoherenceError):  # RequestError is a ValueError
        return None
    return selection


def _shown_epoch(catalog: Catalog, names: Sequence[str], epoch: int | None) -> int | None:
    """A snapshot epoch as the page names it: the last trained epoch of every seed is their
    own weights (None), as a link's ``epoch=`` of it reads."""
    return None if epoch is not None and epoch == final_epoch(catalog, names) else epoch


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
        depth=selection.depth,
        device=selection.device,
    )
