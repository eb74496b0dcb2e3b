"""The whole analysis job's estimate before it starts, and whether to ask first.

``estimate_cost`` (pipeline: the one cost model) gives the memory peak and the forward-pass
equivalents of one (checkpoint, batch) unit, Lanczos included; a job has checkpoints ×
batches units, so a 120-unit job must show its total, not the per-unit figure. Here one batch
forward is timed on this machine (on a job's share of the torch threads) to turn passes into
seconds. cg is counted at its iteration cap (it often stops sooner, but an unconverged solve
runs to the cap) and shown as "up to". Above ``confirm_seconds()``
(``COHERENCE_CONFIRM_MINUTES``, default 30) the CLI wants ``--yes`` and the dashboard a tick.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from coherence.analysis.estimators import Estimator
from coherence.analysis.pipeline import CostEstimate, estimate_cost, unit_seconds
from coherence.analysis.precision import ieee_float32
from coherence.analysis.request import AnalysisRequest
from coherence.cache import slots
from coherence.errors import RequestError
from coherence.probe import best_time

CONFIRM_ENV = "COHERENCE_CONFIRM_MINUTES"
DEFAULT_CONFIRM_MINUTES = 30.0


def confirm_seconds() -> float:
    """Estimated job length above which a person must confirm before it starts."""
    text = os.environ.get(CONFIRM_ENV, "").strip()
    if not text:
        return DEFAULT_CONFIRM_MINUTES * 60
    try:
        minutes = float(text)
    except ValueError:
        minutes = -1.0
    if not minutes >= 0:
        raise RequestError(f"{CONFIRM_ENV}={text!r}: expected minutes ≥ 0, e.g. 30")
    return minutes * 60


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


BESIDE_OTHER_JOB = "; timed while another job computes on this machine, so likely an over-estimate"


@dataclass(frozen=True)
class JobEstimate:
    """Units, seconds per unit, the total, and the memory peak of one analysis job."""

    cost: CostEstimate  # per unit: passes, memory
    unit_passes: float  # forward-pass equivalents per unit, solve and Lanczos included
    unit_seconds: float
    upper_bound: bool  # cg: counted at its iteration cap
    beside_other_job: bool = False  # timed while another process computed: an over-estimate
    cached_units: int = 0  # units the cache holds already: the job assembles them

    @property
    def units(self) -> int:
        """The units left to compute."""
        return self.cost.jobs - self.cached_units

    @property
    def total_seconds(self) -> float:
        return self.units * self.unit_seconds

    @property
    def fits(self) -> bool:
        return self.cost.fits

    @property
    def needs_confirmation(self) -> bool:
        return self.total_seconds > confirm_seconds()

    def describe(self) -> str:
        gib = 1024**3
        bound = "up to " if self.upper_bound else "≈ "
        left = (
            f" left of {self.cost.jobs} ({self.cached_units} cached)" if self.cached_units else ""
        )
        return (
            f"whole job {bound}{format_seconds(self.total_seconds)} ({self.units} × "
            f"(checkpoint, batch){left} at {bound}{format_seconds(self.unit_seconds)} each, N = "
            f"{self.cost.n_examples}, P = {self.cost.n_params:,}), peak memory ≈ "
            f"{self.cost.memory_bytes / gib:.2f} GiB of {self.cost.available_bytes / gib:.1f} "
            "GiB available" + (BESIDE_OTHER_JOB if self.beside_other_job else "")
        )


def time_batch_forward(model: nn.Module, inputs: torch.Tensor, repeats: int = 2) -> float:
    """Fastest of ``repeats`` no-grad forwards of the batch (after one warm-up), on a job's
    share of the threads (what the computation will get); on a GPU each waits for its
    kernels, or it would time their launch alone."""
    before = torch.get_num_threads()
    torch.set_num_threads(slots.threads_per_job())
    try:
        with torch.no_grad(), ieee_float32():
            return best_time(lambda: model(inputs), inputs.device, repeats)
    finally:
        torch.set_num_threads(before)


# The pass weights of the cost model (pipeline.JVP_PASSES, VJP_PASSES, …) were measured on
# CPUs. On an H200, a whole batch's forward fills the GPU far better than the Jacobian
# products do: a paper unit took 5.0× (UNet, 13.5M) and 1.25× (ViT, 4.5M) the time the CPU
# weights give from the batch's forward (bench/results/paper_unit_*_cuda.json). 2.5 brings
# both to about 2× (UNet 0.50, ViT 2.0; no one scale does better, their ratios differ 4×):
# fitted to those two models, so a first estimate only.
GPU_PASS_SCALE = 2.5


def example_seconds(model: nn.Module, inputs: torch.Tensor) -> tuple[float, bool]:
    """One example's forward in seconds (the batch's, ÷ N; GPU-scaled) and whether it was
    timed on a quiet machine. It depends on the model and the batch's shape only, so a
    caller may keep it across requests that differ in anything else (``time_of_job``)."""
    with slots.measuring_slot() as quiet:
        per_example = time_batch_forward(model, inputs) / inputs.shape[0]
    return per_example * (GPU_PASS_SCALE if inputs.is_cuda else 1.0), quiet


def _cg_cap(request: AnalysisRequest) -> int | None:
    """cg is counted at its iteration cap (an upper bound); None for every other estimator."""
    return request.max_iter if request.estimator is Estimator.CG else None  # an enum once built


def estimate_job(model: nn.Module, request: AnalysisRequest, inputs: torch.Tensor) -> JobEstimate:
    """The job's estimate from its first batch's ``inputs`` [N, F, H, W] (on the model's
    device and dtype)."""
    per_example, quiet = example_seconds(model, inputs)
    cap = _cg_cap(request)
    cost = estimate_cost(model, request, inputs, forward_seconds=per_example, cg_iterations=cap)
    seconds = float(cost.seconds_per_unit)
    return JobEstimate(
        cost, cost.forward_passes, seconds, upper_bound=cap is not None, beside_other_job=not quiet
    )


@dataclass(frozen=True)
class JobTime:
    """The time half of ``JobEstimate``, for a caller that does not need the memory (whose
    count traces the model's tangent program: seconds a page need not spend)."""

    unit_seconds: float
    units: int
    upper_bound: bool  # cg: counted at its iteration cap
    beside_other_job: bool


def time_of_job(request: AnalysisRequest, per_example: float, *, quiet: bool = True) -> JobTime:
    """``estimate_job``'s seconds alone, from one example's timed forward
    (``example_seconds``): no model pass, so a page can price every request it is shown."""
    cap = _cg_cap(request)
    seconds = unit_seconds(request, per_example, cap)
    return JobTime(seconds, request.n_units, cap is not None, not quiet)


def estimate_time(model: nn.Module, request: AnalysisRequest, inputs: torch.Tensor) -> JobTime:
    """``estimate_job``'s seconds alone (the same passes and the same timed forward)."""
    per_example, quiet = example_seconds(model, inputs)
    return time_of_job(request, per_example, quiet=quiet)
