"""The requests behind the 'Training dynamics' and 'Sensitivity' panels (pure, no streamlit).

Both are families of ordinary analysis requests derived from the user's Selection, so every
point is its own cache entry (``JobRunner.key``) and extending a sweep computes only the new
points:

- dynamics: the same request with each checkpoint replaced by its snapshot of one epoch
  (``<name>/epochs/NNNN``, see ``surrogates.snapshots``); the epochs are those every seed of
  the group kept, plus the trained checkpoints themselves as the last epoch;
- sensitivity: the same request with another (estimator, λ, rtol, energy threshold, Krylov
  depth) from ``SWEEP_ESTIMATORS`` × ``DAMPING_GRID``; the sidebar's depth stays with the
  selection's own estimator (and is named in its lines' labels). Adding an estimator or a λ
  is one line of these tables.

``coherence study``/``coherence demo`` precompute sweeps (``StudySpec.dynamics_archs``,
``sweep_archs``, ``sweep_dampings``) with the same functions, so the panels find them cached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from coherence.analysis.diagnostics import paper_notation
from coherence.analysis.request import AnalysisRequest
from coherence.dashboard.selection import (
    DEFAULT_DAMPING,
    DEFAULT_ESTIMATOR,
    Selection,
    snapshot_path_name,
)
from coherence.errors import CoherenceError
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates import snapshots
from coherence.workspace import checkpoints_dir, workspace_root

# λ grid of the sensitivity sweep (log-spaced around the paper's 1e-4, METHOD.md §4)
DAMPING_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PAPER_DAMPING = DEFAULT_DAMPING


@dataclass(frozen=True)
class EstimatorSetting:
    """One row of the sensitivity table: an estimator and its options.

    ``rtol``: cg tolerance (the table names the paper's two, 1.5e-2 and 5e-2).
    ``uses_damping``: False for an estimator whose Ĥ ignores λ (euclidean): computed once,
    at the paper's λ, and drawn as a flat line. ``on_demand``: not in the default sweep
    (cg: its iteration count is large on trained models; computed when the user asks).
    """

    estimator: str
    rtol: float | None = None
    uses_damping: bool = True
    on_demand: bool = False
    energy_threshold: float | None = None  # subspace: share of Σσ² of G kept (None: default)
    depth: int | None = None  # Krylov blocks (None: the sidebar's for its estimator, else default)

    def label(self) -> str:
        """The series' name, its numbers written as the panel's help writes them (1.5e-2)."""
        if self.estimator == "cg":
            return f"cg rtol {paper_notation(self.rtol or 0.0)}"
        if self.energy_threshold is not None:
            return f"{self.estimator} energy 1 − {paper_notation(1 - self.energy_threshold)}"
        return self.estimator


# The sensitivity table: one line per estimator setting. cg's iteration cap is the request's
# default (vocabulary.CG_MAX_ITER), reported with each result; `coherence analyze --max-iter`
# runs cg with another (its own cache key).
SWEEP_ESTIMATORS = (
    EstimatorSetting(DEFAULT_ESTIMATOR.value),  # first: at the paper's λ it is the main analysis
    EstimatorSetting("euclidean", uses_damping=False),
    EstimatorSetting("subspace", on_demand=True),
    EstimatorSetting("cg", rtol=1.5e-2, on_demand=True),
    EstimatorSetting("cg", rtol=5e-2, on_demand=True),
    EstimatorSetting("krylov", on_demand=True),
    # the default deepened: its mass and energy maps come much closer to the full solve
    EstimatorSetting(DEFAULT_ESTIMATOR.value, depth=4, on_demand=True),
    EstimatorSetting("ekfac", on_demand=True),
    # the subspace's energy threshold (default 1 − 1e-4): a coarser and a finer basis
    EstimatorSetting("subspace", energy_threshold=1 - 1e-2, on_demand=True),
    EstimatorSetting("subspace", energy_threshold=1 - 1e-6, on_demand=True),
)


def ignores_damping(estimator: str) -> bool:
    """The estimator's Ĥ does not depend on λ (euclidean): an overlay at another λ drew the
    same line twice and offered to compute it again."""
    return any(s.estimator == estimator and not s.uses_damping for s in SWEEP_ESTIMATORS)


def _depth_label(depth: int | None) -> str:
    """A depth other than the estimator's default, as the series' label names it."""
    return "" if depth is None else f" depth {depth}"


# the table's series labels in its order: what fixes each setting's line style and symbol on
# the chart (figures.dynamics.setting_style), whatever subset of it is cached
SETTING_ORDER = tuple(s.label() + _depth_label(s.depth) for s in SWEEP_ESTIMATORS)


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: what it varies, the request and its cache key."""

    group: int  # index into Selection.groups
    x: float  # epoch (dynamics) or λ (sensitivity)
    series: str  # "" (dynamics) or the estimator label (sensitivity)
    request: AnalysisRequest
    key: str
    on_demand: bool = False  # sensitivity: not in the default sweep (computed when asked)
    uses_damping: bool = True  # sensitivity: False for an estimator whose Ĥ ignores λ


# ---------------------------------------------------------------------------- dynamics ---


def group_epochs(root: str | os.PathLike, names: tuple[str, ...]) -> dict[int, tuple[str, ...]]:
    """Epoch → the group's checkpoint names at that epoch: every snapshot epoch all seeds
    kept, then the trained checkpoints at their last epoch (when all seeds trained the same
    number of epochs; a snapshot of that epoch is the same files, hence the same key)."""
    base = checkpoints_dir(workspace_root(root))
    paths = [base / n for n in names]
    out = {
        e: tuple(snapshot_path_name(n, e) for n in names) for e in snapshots.common_epochs(paths)
    }
    lengths = {len(ckpt.read_history(p)) for p in paths}
    if len(lengths) == 1 and (last := lengths.pop()) > 0:
        out[last] = tuple(names)
    return dict(sorted(out.items()))


def dynamics_points(
    root: str | os.PathLike, selection: Selection, runner
) -> tuple[list[SweepPoint], list[str]]:
    """Every (group, epoch) request of the selection and the problems met (one sentence each)."""
    points, problems = [], []
    every = replace(selection, epoch=None)  # the whole training, whichever epoch is shown
    for g, names in enumerate(selection.groups):
        try:
            epochs = group_epochs(root, names)
            for epoch, members in epochs.items():
                request = every.to_request(root, members)
                points.append(SweepPoint(g, float(epoch), "", request, runner.key(request)))
        except (CoherenceError, OSError) as error:
            problems.append(str(error))
    return points, problems


# ------------------------------------------------------------------------- sensitivity ---


def sensitivity_settings(
    selection: Selection,
    *,
    dampings: tuple[float, ...] = DAMPING_GRID,
    include_on_demand: bool = False,
) -> list[tuple[str, Selection, EstimatorSetting]]:
    """(estimator label, selection, setting) of every setting, the selection's own λ
    included. The sidebar's depth goes to the selection's estimator only (the others run at
    their own); a setting that repeats an earlier one (``ekfac-krylov depth 4`` when the
    sidebar already asks for depth 4) is left out, so no line is drawn twice."""
    out, seen = [], set()
    grid = tuple(sorted({*dampings, selection.damping}))
    for setting in SWEEP_ESTIMATORS:
        if setting.on_demand and not include_on_demand:
            continue
        values = grid if setting.uses_damping else (PAPER_DAMPING,)
        depth = selection.depth if setting.estimator == selection.estimator else None
        for damping in values:
            chosen = replace(
                selection,
                estimator=setting.estimator,
                damping=damping,
                rtol=setting.rtol,
                depth=setting.depth if setting.depth is not None else depth,
            )
            key = (chosen.estimator, chosen.resolved_depth, chosen.rtol, damping)
            key += (setting.energy_threshold,)
            if key in seen:
                continue
            seen.add(key)
            # a depth other than the estimator's default (the setting's or the sidebar's)
            out.append((setting.label() + _depth_label(chosen.depth), chosen, setting))
    return out


def sensitivity_points(
    root: str | os.PathLike,
    selection: Selection,
    runner,
    *,
    dampings: tuple[float, ...] = DAMPING_GRID,
    include_on_demand: bool = False,
) -> tuple[list[SweepPoint], list[str]]:
    """Every (group, estimator, λ) request and the problems met."""
    points, problems = [], []
    try:  # the same settings for every group: each estimator's own options, no group's
        settings = sensitivity_settings(
            selection, dampings=dampings, include_on_demand=include_on_demand
        )
    except (CoherenceError, OSError) as error:
        return points, [str(error)]
    for g, names in enumerate(selection.groups):
        for label, chosen, setting in settings:
            try:  # one setting's problem leaves the group's others in the sweep
                request = chosen.to_request(root, names)
                if setting.energy_threshold is not None:
                    request = replace(request, energy_threshold=setting.energy_threshold)
                key = runner.key(request)
            except (CoherenceError, OSError) as error:
                if str(error) not in problems:
                    problems.append(str(error))
                continue
            points.append(
                SweepPoint(
                    g,
                    chosen.damping,
                    label,
                    request,
                    key,
                    on_demand=setting.on_demand,
                    uses_damping=setting.uses_damping,
                )
            )
    return points, problems
