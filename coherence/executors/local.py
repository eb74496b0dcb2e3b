"""The local executor: every unit and training run in this process, one after another
(today's behaviour; the caller holds a compute slot for it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from coherence.analysis.request import AnalysisRequest
from coherence.analysis.results import AnalysisResult, UnitResult
from coherence.executors import AnalysisProgress, TrainRun


class LocalExecutor:
    """Computes in the calling process on its torch threads."""

    name = "local"
    local = True

    def connect(self) -> None:
        """Nothing to reach."""

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
        from coherence.analysis import pipeline

        return pipeline.run_analysis(
            request,
            progress=progress,
            trust_code=trust_code,
            known_units=known_units,
            on_unit=on_unit,
            prepared=prepared,
        )

    def train(self, runs: Sequence[TrainRun], *, log: Callable[[str], None] | None = None) -> None:
        from coherence.surrogates import training

        for run in runs:
            training.train(run.data, run.out, run.args, progress=run.progress, log=log)
