"""The analysis request: what `coherence analyze` and the dashboard ask the engine for.

A frozen, validated dataclass whose canonical JSON (``to_dict``) is stored beside every result
and hashed into cache keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from coherence.analysis.estimators import (
    DEFAULT_DEPTH,
    DEFAULT_ENERGY_THRESHOLD,
    Estimator,
    default_energy_threshold,
    parse_cg_start,
    parse_estimator,
)
from coherence.analysis.observables import parse_responses
from coherence.errors import RequestError
from coherence.io import resolve_device

MAX_EXAMPLES = 512  # N = classes × steps; the N×N solves and N JVPs grow fast past this


@dataclass(frozen=True)
class AnalysisRequest:
    """Checkpoints × batches (one test trajectory per class, a window of transitions)."""

    checkpoints: tuple[str, ...]  # checkpoint directories
    data: str  # dataset directory
    classes: tuple[str, ...]
    t_start: int = 0
    n_steps: int = 16
    trajectories: tuple[int, ...] = (0,)  # one batch per trajectory index
    responses: tuple[str, ...] = ("smse",)  # the first fills H; all are computed in one pass
    estimator: str = "subspace"
    damping: float = 1e-4
    rtol: float | None = None  # cg only
    energy_threshold: float | None = None  # None: 1 − 1e-4 (krylov: 1); subspace, krylov, cg
    depth: int = DEFAULT_DEPTH  # krylov only: blocks of span{G, ηG, …}
    cg_start: str = "deflated"  # cg only: "deflated" (from the subspace solution) or "cold"
    device: str = "auto"  # auto | cpu | cuda
    split: str = "test"
    top_eigenvalue: bool = True  # Lanczos on η + λI per (checkpoint, batch)

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise RequestError("no checkpoint given; pass at least one --checkpoint")
        if len(set(self.checkpoints)) != len(self.checkpoints):
            raise RequestError(f"checkpoints {list(self.checkpoints)} name one twice")
        if not self.classes:
            raise RequestError("no class given; pass --classes, e.g. CE-RP,CE-CRP,CE-RPUI")
        if not self.trajectories:
            raise RequestError("no trajectory given; pass --trajectories, e.g. 0,1,2")
        if any(t < 0 for t in self.trajectories) or len(set(self.trajectories)) != len(
            self.trajectories
        ):
            raise RequestError(
                f"trajectories {list(self.trajectories)}: distinct non-negative indices"
            )
        n = len(self.classes) * self.n_steps
        if n < 2 or n > MAX_EXAMPLES:
            raise RequestError(
                f"a batch of {len(self.classes)} classes × {self.n_steps} steps has N = {n} "
                f"examples; influence needs 2 ≤ N ≤ {MAX_EXAMPLES}: shrink the window or "
                "the classes"
            )
        parse_responses(self.responses)
        estimator = parse_estimator(self.estimator)
        if not (math.isfinite(self.damping) and self.damping > 0):
            raise RequestError(f"damping={self.damping}: must be > 0 (default 1e-4)")
        if estimator is Estimator.CG and self.rtol is None:
            raise RequestError(
                "estimator cg needs --rtol (paper: 1.5e-2 UNet, 5e-2 ViT), or use subspace"
            )
        if self.rtol is not None and not 0 < self.rtol < 1:
            raise RequestError(f"rtol={self.rtol}: must lie in (0, 1)")
        if self.energy_threshold is not None and not 0 < self.energy_threshold <= 1:
            raise RequestError(
                f"energy_threshold={self.energy_threshold}: must lie in (0, 1] "
                f"(default {DEFAULT_ENERGY_THRESHOLD})"
            )
        if not isinstance(self.depth, int) or not 1 <= self.depth <= 16:
            raise RequestError(f"depth={self.depth!r}: an integer from 1 to 16 (default 4)")
        parse_cg_start(self.cg_start)
        if self.device not in ("auto", "cpu", "cuda"):
            raise RequestError(f"device={self.device!r}: choose auto, cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RequestError("device cuda was asked for but no CUDA GPU is visible; use cpu")
        # one canonical value per meaning, so a request equals its own round trip through JSON
        object.__setattr__(self, "energy_threshold", self.to_dict()["energy_threshold"])

    @property
    def resolved_energy_threshold(self) -> float:
        """The energy threshold the estimator will use (its default when None was given)."""
        if self.energy_threshold is not None:
            return self.energy_threshold
        return default_energy_threshold(parse_estimator(self.estimator))

    @property
    def n_examples(self) -> int:
        return len(self.classes) * self.n_steps

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-ready form (lists, not tuples; each estimator option recorded only
        for the estimators that use it, None otherwise)."""
        estimator = parse_estimator(self.estimator)
        cg = estimator is Estimator.CG
        uses_basis = estimator is Estimator.SUBSPACE or estimator is Estimator.KRYLOV
        uses_basis = uses_basis or (cg and self.cg_start == "deflated")
        return {
            "checkpoints": list(self.checkpoints),
            "data": self.data,
            "classes": list(self.classes),
            "t_start": self.t_start,
            "n_steps": self.n_steps,
            "trajectories": list(self.trajectories),
            "responses": list(self.responses),
            "estimator": self.estimator,
            "damping": self.damping,
            "rtol": self.rtol if cg else None,
            "energy_threshold": self.resolved_energy_threshold if uses_basis else None,
            "depth": self.depth if estimator is Estimator.KRYLOV else None,
            "cg_start": self.cg_start if cg else None,
            "device": self.device,
            "split": self.split,
            "top_eigenvalue": self.top_eigenvalue,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnalysisRequest:
        fields = dict(data)
        for key in ("checkpoints", "classes", "trajectories", "responses"):
            if key in fields:
                fields[key] = tuple(fields[key])
        for key in ("energy_threshold", "depth", "cg_start"):  # None: not used, default
            if fields.get(key, 0) is None:
                del fields[key]
        return cls(**fields)


def parse_window(window: str) -> tuple[int, int]:
    """'START:STEPS' -> (start, steps), with an error that shows the expected form."""
    try:
        start, steps = (int(part) for part in window.split(":"))
    except ValueError:
        raise RequestError(f"window {window!r}: expected START:STEPS, e.g. 0:16") from None
    return start, steps
