"""Requests: what `coherence analyze`, the dashboard and the engine ask for, validated once.

``InfluenceOptions`` says how one influence matrix is computed (estimator, its options, the
responses) and owns the rules for those values; ``AnalysisRequest`` (checkpoints × batches)
builds one to check its own, and adds the rules for the window, the trajectories and the
device. The CLI, the dashboard, the pipeline and ``compute_influence`` therefore share one
rule and one message per value. Both hold enums (vocabulary.py) and accept their names.

``AnalysisRequest.to_dict`` is the canonical JSON stored beside every result and hashed into
cache keys (plain strings: the same bytes whether the request was built from enums or names).
Torch-free, so the dashboard can build and check requests without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coherence.analysis.vocabulary import (
    CG_MAX_ITER,
    DEFAULT_DAMPING,
    DEFAULT_ESTIMATOR,
    MAX_CG_ITER,
    MAX_DEPTH,
    CGStart,
    Device,
    Estimator,
    Response,
    default_depth,
    default_energy_threshold,
    parse_cg_start,
    parse_estimator,
    parse_response,
    parse_responses,
)
from coherence.errors import RequestError
from coherence.io import check_device, resolve_device
from coherence.simulation.families import SPLITS

if TYPE_CHECKING:
    import torch

MAX_EXAMPLES = 512  # N = classes × steps; the N×N solves and N JVPs grow fast past this


MAX_DAMPING = 1e12  # far past η's eigenvalues (Ĥ is euclidean's there); 1e39 overflowed float32


def check_damping(damping: float) -> None:
    """λ in η + λI: a finite number > 0 (what a stored request may hold)."""
    if not (math.isfinite(damping) and damping > 0):
        raise RequestError(f"damping={damping}: must be a finite number > 0 (default 1e-4)")


def check_new_damping(damping: float) -> None:
    """``check_damping`` and at most MAX_DAMPING, for a λ asked for now (the CLI's): not
    applied to stored requests, which a bound added later would make unreadable (a cache
    entry that fails to parse is dropped)."""
    check_damping(damping)
    if damping > MAX_DAMPING:
        raise RequestError(
            f"damping={damping:g}: at most {MAX_DAMPING:g} (λ that far above η's eigenvalues "
            "gives euclidean's Ĥ, and past float32's range the solves fail; default 1e-4)"
        )


def check_rtol(estimator: Estimator, rtol: float | None) -> None:
    """cg's relative residual: required by cg, in (0, 1) whenever given."""
    if estimator is Estimator.CG and rtol is None:
        raise RequestError(
            "estimator cg needs rtol, the relative residual at which CG stops (paper: 1.5e-2 "
            f"UNet, 5e-2 ViT; `coherence analyze` needs --rtol), or use estimator "
            f"{DEFAULT_ESTIMATOR} (the default)"
        )
    if rtol is not None and not 0 < rtol < 1:
        raise RequestError(f"rtol={rtol}: must lie in (0, 1), e.g. 1e-2")


def window_error(
    t_start: int, n_steps: int, transitions: int | None = None, dataset: str = "the dataset"
) -> str | None:
    """What is wrong with the window START:STEPS, or None: start ≥ 0 and at least one step;
    given a dataset's number of ``transitions``, within its trajectories."""
    if n_steps < 1 or t_start < 0:
        return f"window {t_start}:{n_steps}: start must be ≥ 0 and length ≥ 1 (START:STEPS)"
    if transitions is not None and t_start + n_steps > transitions:
        fixes = [f"a start ≤ {transitions - n_steps}"] if n_steps <= transitions else []
        if t_start < transitions:  # at least one step left after this start
            fixes.append(f"at most {transitions - t_start} steps")
        if not fixes:
            fixes.append(f"a start < {transitions}")
        return (
            f"window {t_start}:{n_steps} needs snapshots {t_start}..{t_start + n_steps} but the "
            f"trajectories of {dataset} have {transitions + 1} (0..{transitions}); "
            f"use {' or '.join(fixes)}"
        )
    return None


def examples_error(n_classes: int, n_steps: int) -> str | None:
    """What is wrong with a batch of N = classes × steps examples, or None."""
    n = n_classes * n_steps
    if n < 2 or n > MAX_EXAMPLES:
        fix = "widen the window or add classes" if n < 2 else "shrink the window or the classes"
        return (
            f"a batch of {n_classes} classes × {n_steps} steps has N = {n} "
            f"examples; influence needs 2 ≤ N ≤ {MAX_EXAMPLES}: {fix}"
        )
    return None


@dataclass(frozen=True)
class InfluenceOptions:
    """How one influence matrix is computed: ``compute_influence``'s options, checked here
    once (names become enums; ``responses`` loses repeats, keeping the order)."""

    estimator: Estimator = DEFAULT_ESTIMATOR
    responses: tuple[Response, ...] = (Response.SMSE,)  # the first fills H
    damping: float = DEFAULT_DAMPING
    rtol: float | None = None  # cg only (checked whenever given)
    energy_threshold: float | None = None  # None: the estimator's default
    depth: int | None = None  # krylov, ekfac-krylov, deflated cg; None: the estimator's default
    cg_start: CGStart = CGStart.DEFLATED  # cg only
    max_iter: int = CG_MAX_ITER  # cg only: iteration cap per column
    chunk_size: int | None = None  # examples per vmapped VJP call; None: all at once

    def __post_init__(self) -> None:
        object.__setattr__(self, "estimator", parse_estimator(self.estimator))
        object.__setattr__(self, "cg_start", parse_cg_start(self.cg_start))
        object.__setattr__(self, "responses", parse_responses(self.responses))
        check_damping(self.damping)
        check_rtol(self.estimator, self.rtol)
        if self.energy_threshold is not None and not 0 < self.energy_threshold <= 1:
            raise RequestError(
                f"energy_threshold={self.energy_threshold}: must lie in (0, 1] (default "
                f"{default_energy_threshold(self.estimator)} for {self.estimator.value})"
            )
        cap = self.max_iter
        if not isinstance(cap, int) or isinstance(cap, bool) or not 1 <= cap <= MAX_CG_ITER:
            raise RequestError(
                f"max_iter={cap!r}: must be a whole number from 1 to {MAX_CG_ITER} (cg's "
                f"iterations per column; default {CG_MAX_ITER})"
            )
        if self.depth is None:
            object.__setattr__(self, "depth", default_depth(self.estimator))
        depth = self.depth
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= MAX_DEPTH:
            raise RequestError(
                f"depth={depth!r}: must be an integer from 1 to {MAX_DEPTH} (blocks of "
                f"span{{G, ηG, …}}; default {default_depth(self.estimator)} for "
                f"{self.estimator.value})"
            )
        if self.chunk_size is not None and self.chunk_size < 1:
            raise RequestError(f"chunk_size must be None or at least 1; got {self.chunk_size}")

    @property
    def resolved_energy_threshold(self) -> float:
        """The energy threshold the estimator will use (its default when None was given)."""
        if self.energy_threshold is not None:
            return self.energy_threshold
        return default_energy_threshold(self.estimator)


@dataclass(frozen=True)
class AnalysisRequest:
    """Checkpoints × batches (one test trajectory per class, a window of transitions)."""

    checkpoints: tuple[str, ...]  # checkpoint directories
    data: str  # dataset directory
    classes: tuple[str, ...]
    t_start: int = 0
    n_steps: int = 16
    trajectories: tuple[int, ...] = (0,)  # one batch per trajectory index
    # the first fills H; all are computed in one pass (order and repeats kept: the key has them)
    responses: tuple[Response, ...] = (Response.SMSE,)
    estimator: Estimator = DEFAULT_ESTIMATOR
    damping: float = DEFAULT_DAMPING
    rtol: float | None = None  # cg only
    # None: 1 − 1e-4 (subspace), 1 (krylov, ekfac-krylov, cg); all but ekfac and euclidean
    energy_threshold: float | None = None
    depth: int | None = None  # krylov, ekfac-krylov, deflated cg; None: 4 (ekfac-krylov: 1)
    cg_start: CGStart = CGStart.DEFLATED  # cg only: from the krylov solution, or cold
    max_iter: int = CG_MAX_ITER  # cg only: iteration cap per column (reported, never silent)
    device: Device = Device.AUTO
    split: str = "test"
    top_eigenvalue: bool = True  # Lanczos on η + λI per (checkpoint, batch)

    def __post_init__(self) -> None:
        self._check_selection()
        if parse_estimator(self.estimator) is not Estimator.CG:  # --max-iter: ignored, as said
            object.__setattr__(self, "max_iter", CG_MAX_ITER)
        options = self.influence_options  # the estimator's rules (InfluenceOptions)
        given = (self.responses,) if isinstance(self.responses, str) else self.responses
        # a response named twice is the same request (it was its own cache entry, smse+smse)
        parsed = tuple(dict.fromkeys(parse_response(r) for r in given))
        object.__setattr__(self, "responses", parsed)
        object.__setattr__(self, "estimator", options.estimator)
        object.__setattr__(self, "cg_start", options.cg_start)
        object.__setattr__(self, "depth", options.depth)  # resolved: the estimator's default
        object.__setattr__(self, "max_iter", options.max_iter)  # the default where unused
        object.__setattr__(self, "device", check_device(self.device))
        # one canonical value per meaning, so a request equals its own round trip through JSON
        recorded = self.to_dict()
        object.__setattr__(self, "energy_threshold", recorded["energy_threshold"])
        if recorded["depth"] is None:  # unused by this estimator
            object.__setattr__(self, "depth", default_depth(self.estimator))
        if recorded["cg_start"] is None:
            object.__setattr__(self, "cg_start", CGStart.DEFLATED)
        if "max_iter" not in recorded:  # the default, or unused by this estimator
            object.__setattr__(self, "max_iter", CG_MAX_ITER)

    def _check_selection(self) -> None:
        """Checkpoints, classes, trajectories and the window (the dataset checks the rest)."""
        if not self.checkpoints:
            raise RequestError("no checkpoint given; pass at least one --checkpoint")
        if len(set(self.checkpoints)) != len(self.checkpoints):
            raise RequestError(f"checkpoints {', '.join(self.checkpoints)} name one twice")
        if not self.classes:
            raise RequestError("no class given; pass --classes, e.g. CE-RP,CE-CRP,CE-RPUI")
        if not self.trajectories:
            raise RequestError("no trajectory given; pass --trajectories, e.g. 0,1,2")
        if any(t < 0 for t in self.trajectories) or len(set(self.trajectories)) != len(
            self.trajectories
        ):
            raise RequestError(
                f"trajectories {','.join(map(str, self.trajectories))}: distinct "
                "non-negative indices"
            )
        error = window_error(self.t_start, self.n_steps) or examples_error(
            len(self.classes), self.n_steps
        )
        if error:
            raise RequestError(error)
        if self.split not in SPLITS:  # the dataset's message asked to import "nope"
            raise RequestError(f"split {self.split!r}: choose one of {', '.join(SPLITS)}")

    @property
    def influence_options(self) -> InfluenceOptions:
        """The options of each (checkpoint, batch)'s influence computation."""
        return InfluenceOptions(
            estimator=self.estimator,
            responses=self.responses,
            damping=self.damping,
            rtol=self.rtol,
            energy_threshold=self.energy_threshold,
            depth=self.depth,
            cg_start=self.cg_start,
            max_iter=self.max_iter,
        )

    @property
    def resolved_energy_threshold(self) -> float:
        """The energy threshold the estimator will use (its default when None was given)."""
        if self.energy_threshold is not None:
            return self.energy_threshold
        return default_energy_threshold(self.estimator)

    @property
    def n_examples(self) -> int:
        return len(self.classes) * self.n_steps

    @property
    def n_units(self) -> int:
        """(checkpoint, batch) units: what a job computes, caches and is estimated by."""
        return len(self.checkpoints) * len(self.trajectories)

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-ready form (lists, not tuples; names, not enums; each estimator
        option recorded only for the estimators that use it, None otherwise; cg's
        ``max_iter`` only when it is not the default, so the keys of every request made
        before it could be chosen stay the same)."""
        cg = self.estimator is Estimator.CG
        deflated = cg and self.cg_start is not CGStart.COLD  # a Krylov start: depth, threshold
        krylov = self.estimator in (Estimator.KRYLOV, Estimator.EKFAC_KRYLOV)
        uses_basis = krylov or self.estimator is Estimator.SUBSPACE or deflated
        return {
            "checkpoints": list(self.checkpoints),
            "data": self.data,
            "classes": list(self.classes),
            "t_start": self.t_start,
            "n_steps": self.n_steps,
            "trajectories": list(self.trajectories),
            "responses": [r.value for r in self.responses],
            "estimator": self.estimator.value,
            "damping": self.damping,
            "rtol": self.rtol if cg else None,
            "energy_threshold": self.resolved_energy_threshold if uses_basis else None,
            "depth": self.depth if krylov or deflated else None,
            "cg_start": self.cg_start.value if cg else None,
            "device": self.device.value,
            "split": self.split,
            "top_eigenvalue": self.top_eigenvalue,
        } | ({"max_iter": self.max_iter} if cg and self.max_iter != CG_MAX_ITER else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnalysisRequest:
        fields = dict(data)
        for key in ("checkpoints", "classes", "trajectories", "responses"):
            if key in fields:
                fields[key] = tuple(fields[key])
        if _from_span_g_start(fields):
            fields["depth"] = 1  # recorded before the Krylov start: span(G) is depth 1
        for key in ("energy_threshold", "depth", "cg_start"):  # None: not used, default
            if fields.get(key, 0) is None:
                del fields[key]
        return cls(**fields)


def stored_depth(fields: Mapping[str, Any]) -> Any:
    """The depth a stored request's record stands for, as ``from_dict`` reads it (None: the
    estimator's default; not checked here)."""
    return 1 if _from_span_g_start(dict(fields)) else fields.get("depth")


def _from_span_g_start(fields: dict[str, Any]) -> bool:
    """A deflated cg request recorded before deflated cg started from the Krylov solution:
    its start was the Galerkin solution in span(G) at its recorded energy threshold, which
    is the Krylov start of depth 1 (the record has no depth)."""
    return (
        fields.get("estimator") == Estimator.CG.value
        and fields.get("cg_start") == CGStart.DEFLATED.value
        and "depth" in fields
        and fields["depth"] is None
    )


def parse_window(window: str) -> tuple[int, int]:
    """'START:STEPS' -> (start, steps), with an error that shows the expected form."""
    try:
        start, steps = (int(part) for part in window.split(":"))
    except ValueError:
        raise RequestError(f"window {window!r}: expected START:STEPS, e.g. 0:16") from None
    return start, steps
