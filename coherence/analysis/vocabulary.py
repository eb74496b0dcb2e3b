"""The words a request is made of: estimator, cg start, response and device, as enums.

Requests (``AnalysisRequest``, ``InfluenceOptions``, ``TrainingArgs``) hold these enums, not
strings: each name is parsed once, where the request is built, and an unknown one raises
RequestError listing the allowed values. They are ``StrEnum``s, so a member is equal to its
name, hashes like it, formats as it and serializes to it in JSON: callers that pass strings
(the CLI, the dashboard's URL, cached JSON) keep working and cache keys do not change.

Torch-free on purpose: the dashboard and the job records import it without paying for torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from types import MappingProxyType

from coherence.errors import RequestError, parse_choice


class Estimator(StrEnum):
    """How M⁻¹ is applied: Galerkin solve in span(G) or in a block Krylov space (plain, or
    EK-FAC-preconditioned: the default), conjugate gradients, EK-FAC alone, identity."""

    SUBSPACE = "subspace"
    CG = "cg"
    EUCLIDEAN = "euclidean"
    KRYLOV = "krylov"
    EKFAC = "ekfac"
    EKFAC_KRYLOV = "ekfac-krylov"


class CGStart(StrEnum):
    """Where cg starts: the Galerkin solution in span{G, ηG, …} (``depth`` blocks) with that
    space deflated (default); the Galerkin solution in the EK-FAC-preconditioned Krylov
    space, deflated, with EK-FAC-preconditioned iterations; or zero."""

    DEFLATED = "deflated"
    COLD = "cold"
    PRECONDITIONED = "preconditioned"


class Response(StrEnum):
    """Response observable A (the bra of H); the perturbation B is always SMSE."""

    SMSE = "smse"
    MASS = "mass"
    ENERGY = "energy"


class Device(StrEnum):
    """Where a model runs: ``auto`` is CUDA when a GPU is visible, else the CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


# the default solve: Galerkin in span(G) + span(M̃⁻¹G), its SMSE map plus the residual
# correction R M̃⁻¹Rᵀ. On four small trained models against the exact dense solve
# (bench/results/fidelity_subspace_ekfac_ekfac-krylov.json, λ = 1e-4) its Ĥ correlates at
# Pearson 0.94–0.98 where subspace's does at 0.65–0.82, for 1.8–2.1×
# subspace's time on the demo models (estimator_cost.json; README, issue 14)
DEFAULT_ESTIMATOR = Estimator.EKFAC_KRYLOV
DEFAULT_DAMPING = 1e-4  # λ in η + λI
DEFAULT_ENERGY_THRESHOLD = 1 - 1e-4  # share of Σσ² of G kept in span(Q)
# krylov keeps every numerically non-zero direction of G: measured on small trained models,
# truncating block 1 at 1 − 1e-4 (rank 14 of 48) cut Pearson vs the exact solve 0.967 → 0.931
KRYLOV_ENERGY_THRESHOLD = 1.0
DEFAULT_DEPTH = 4  # krylov, deflated cg: blocks of span{G, ηG, η²G, η³G}
# ekfac-krylov: one block. Depth 1 beats krylov depth 4 (4× its products) on every model
EKFAC_KRYLOV_DEPTH = 1
MAX_DEPTH = 16
CG_MAX_ITER = 500  # default iteration cap per cg column
MAX_CG_ITER = 100_000  # the largest cap accepted: days of work per column at demo scale
PAPER_RTOL = {"unet": 1.5e-2, "vit": 5e-2}  # METHOD.md §4: the paper's cg tolerances
PAPER_BATCHES = 6  # METHOD.md §5: test trajectories (batches) analysed per seed
# residuals computed in float32 stall between about 1e-6 and 1e-4, by model and λ (an
# audit's preconditioned cg on a small model at λ = 1e-2 stopped at 1.8e-4 of rtol 1e-5)
FLOAT32_RTOL_FLOOR = 1e-4  # written "1e-4" in rtol_out_of_reach's sentence
ARCH_LABELS = MappingProxyType({"unet": "UNet", "vit": "ViT"})  # as the paper writes them


def default_energy_threshold(estimator: Estimator) -> float:
    """The energy threshold an estimator uses when none is given."""
    # cg deflates a Krylov basis
    krylov_basis = estimator in (Estimator.KRYLOV, Estimator.EKFAC_KRYLOV, Estimator.CG)
    return KRYLOV_ENERGY_THRESHOLD if krylov_basis else DEFAULT_ENERGY_THRESHOLD


def default_depth(estimator: Estimator) -> int:
    """The number of Krylov blocks an estimator uses when none is given."""
    return EKFAC_KRYLOV_DEPTH if estimator is Estimator.EKFAC_KRYLOV else DEFAULT_DEPTH


def rtol_out_of_reach(rtol: float) -> str | None:
    """Why a cg tolerance may never be met in float32 (None when it can be): said before a
    job, on the command line and in the sidebar, since cg then runs every column to its
    iteration cap (≈ 100 s on the demo UNet) and only then says it did not converge."""
    if rtol >= FLOAT32_RTOL_FLOOR:
        return None
    return (
        f"{rtol:g} is below what float32 residuals reliably reach (they stall between about "
        "1e-6 and 1e-4, by model and λ): cg may run every column to its "
        "iteration cap and report it unconverged"
    )


def parse_estimator(value: str | Estimator) -> Estimator:
    """An Estimator from its name; unknown names raise RequestError with the allowed list."""
    return parse_choice(Estimator, value, "estimator")


def parse_cg_start(value: str | CGStart) -> CGStart:
    """A CGStart from its name; unknown names raise RequestError with the allowed list."""
    return parse_choice(CGStart, value, "cg start")


def parse_response(value: str | Response) -> Response:
    """A Response from its name; unknown names raise RequestError with the allowed list."""
    return parse_choice(Response, value, "response")


def parse_responses(value: str | Response | Sequence[str | Response]) -> tuple[Response, ...]:
    """One response or a sequence of them → tuple without repeats, in the given order."""
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise RequestError("response is an empty list; give at least one of: smse, mass, energy")
    return tuple(dict.fromkeys(parse_response(v) for v in items))


def parse_device(value: str | Device) -> Device:
    """A Device from its name (whether CUDA is visible is ``io.check_device``'s question)."""
    try:
        return Device(value)
    except ValueError:
        raise RequestError(f"device={value!r}: choose auto, cpu or cuda") from None
