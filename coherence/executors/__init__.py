"""Where analysis units and training runs compute: here (``local``) or on a Ray cluster.

One seam for both kinds of independent work, a (checkpoint, batch) analysis unit and an
(architecture, seed) training run. The driver (the CLI process or a dashboard job worker)
keeps every cache duty: keys, the store, assembly. An executor only computes.

- ``local`` (the default): today's behaviour, nothing to install.
- ``ray``: ``--ray-address HOST:PORT`` on ``coherence analyze|train|study``, or
  ``COHERENCE_RAY_ADDRESS`` (which the dashboard's job workers inherit). Needs the
  ``cluster`` extra (``pip install -e '.[cluster]'`` from the checkout); Ray is imported only then.

This module imports nothing heavy: the job worker reads it before it takes a compute slot.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from coherence.errors import CoherenceError

if TYPE_CHECKING:
    from coherence.analysis.request import AnalysisRequest
    from coherence.analysis.results import AnalysisResult, UnitResult
    from coherence.surrogates.training import TrainingArgs

ADDRESS_ENV = "COHERENCE_RAY_ADDRESS"

AnalysisProgress = Callable[[float, str], None]  # (fraction of the job, stage)
TrainProgress = Callable[[int, int, float, float], None]  # (epoch, epochs, fraction, loss)


class ClusterError(CoherenceError):
    """A unit or training run could not be computed on the Ray cluster (names which).
    ``worker_error``: the project's own error the worker raised, where it was one, so the
    driver can name what only it holds (the data files of a batch)."""

    def __init__(self, message: str, worker_error: CoherenceError | None = None) -> None:
        super().__init__(message)
        self.worker_error = worker_error


class ClusterUnreachable(ClusterError):
    """The Ray cluster's address does not answer (or Ray is not installed)."""


class VersionMismatch(ClusterError):
    """A Ray worker runs another version of coherence than the driver."""


@dataclass(frozen=True)
class TrainRun:
    """One (architecture, seed) training: ``train(data, out, args)`` with its progress."""

    data: Path
    out: Path
    args: TrainingArgs
    progress: TrainProgress | None = None


class Executor(Protocol):
    """Computes analysis units and training runs; the caller stores what comes back."""

    name: str
    local: bool  # computes in this process (holds a local compute slot while it does)

    def connect(self) -> object:
        """Reach where the work runs (a cluster: within a timeout, else ClusterUnreachable)."""
        ...

    def run_analysis(
        self,
        request: AnalysisRequest,
        *,
        progress: AnalysisProgress | None = None,
        trust_code: bool = False,
        known_units: Mapping[tuple[int, int], UnitResult] | None = None,
        on_unit: Callable[[UnitResult], None] | None = None,
        prepared: tuple[Any, list[Any]] | None = None,
    ) -> AnalysisResult:
        """The request's result; ``known_units`` are reused, ``on_unit`` sees each new one;
        ``prepared``: the request's ``pipeline.prepare`` if the caller already made it."""
        ...

    def train(self, runs: Sequence[TrainRun], *, log: Callable[[str], None] | None = None) -> None:
        """Train (or resume) every run and write its checkpoint directory."""
        ...


def ray_address(explicit: str | None = None) -> str | None:
    """The Ray cluster to use: ``explicit`` (--ray-address), else COHERENCE_RAY_ADDRESS,
    else None (compute locally)."""
    for value in (explicit, os.environ.get(ADDRESS_ENV)):
        if value is not None and value.strip():
            return value.strip()
    return None


def get_executor(address: str | None = None, **options: Any) -> Executor:
    """The executor for ``address`` (see ``ray_address``): local when there is none."""
    resolved = ray_address(address)
    if resolved is None:
        from coherence.executors.local import LocalExecutor

        return LocalExecutor()
    from coherence.executors.ray_cluster import RayExecutor

    return RayExecutor(resolved, **options)
