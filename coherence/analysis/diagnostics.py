"""How an influence matrix was obtained, and what to say when a cg solve missed its tolerance.

``InfluenceDiagnostics`` is reported next to every H (cached as JSON via ``to_dict``);
``convergence_summary`` reads the cached [S][B] diagnostics of a result for the CLI and the
dashboard. Torch-free (the tensors of ``InfluenceResult`` are only annotated).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from coherence.analysis.vocabulary import ARCH_LABELS, PAPER_RTOL

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class InfluenceDiagnostics:
    """How H was obtained; every field is reported next to the result (JSON via to_dict)."""

    estimator: str
    responses: tuple[str, ...]
    damping: float  # λ; for euclidean, recorded but unused
    n_examples: int
    output_size: int  # D = F·H·W
    n_params: int
    device: str
    dtype: str
    seconds: float
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    rtol: float | None = None  # cg only
    max_iter: int | None = None  # cg only
    energy_threshold: float | None = None  # subspace, krylov, deflated cg: share of Σσ² of G
    rank: int | None = None  # subspace, krylov: s, the dimension of the Galerkin subspace
    subspace_eigenvalues: tuple[float, ...] | None = None  # eig(QᵀηQ), Q of span(G), descending
    iterations: tuple[int, ...] | None = None  # cg: per perturbation column
    # every estimator but euclidean and ekfac (whose residual would cost more than its
    # estimate): the true final ‖g_B(p) − (η+λI)y_p‖/‖g_B(p)‖ per column
    residuals: tuple[float, ...] | None = None
    converged: bool | None = None  # cg: every column reached rtol within max_iter
    worst_residual: float | None = None  # cg: max of residuals (> rtol when not converged)
    jvp_method: str | None = None  # "traced", or "jvp" after a failed check; None: unused
    depth: int | None = None  # krylov: number of blocks of span{G, ηG, …}
    block_ranks: tuple[int, ...] | None = None  # krylov: rank of each block
    cg_start: str | None = None  # cg: "deflated" (krylov start), "preconditioned" or "cold"
    start_residuals: tuple[float, ...] | None = None  # deflated cg: residuals at the start
    batch_jvps: int | None = None  # products with the batch Jacobian J (≈ 2.2 forwards each)
    batch_vjps: int | None = None  # products with Jᵀ (≈ 2 forwards each)
    # ekfac-krylov: ‖R M̃⁻¹Rᵀ‖ / ‖G Yᵀ‖ (Frobenius), the share its SMSE residual correction adds
    residual_correction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["stage_seconds"] = dict(self.stage_seconds)
        return out


@dataclass(frozen=True)
class InfluenceResult:
    """H for the first requested response, H for every response, the diagnostics, and the
    solved rows y_p = M⁻¹ g_B(p) [k, P] of the columns asked for (``influence_with``'s
    ``direction_columns``: the counterfactual check steps along them; else None)."""

    H: Tensor
    H_by_response: Mapping[str, Tensor]
    diagnostics: InfluenceDiagnostics
    directions: Tensor | None = None


def unconverged_message(diagnostics: InfluenceDiagnostics) -> str:
    """One sentence for an unconverged cg solve: how far off it is and what to change."""
    assert diagnostics.residuals is not None and diagnostics.rtol is not None
    bad = sum(r > diagnostics.rtol for r in diagnostics.residuals)
    return (
        f"cg did not converge: {bad} of {len(diagnostics.residuals)} columns stopped at "
        f"max_iter={diagnostics.max_iter} with relative residual up to "
        f"{diagnostics.worst_residual:.3g} > rtol={diagnostics.rtol:g}, so H is inaccurate; "
        + _cg_advice(diagnostics.cg_start, "max_iter", "rtol", "cg_start='preconditioned'")
    )


def _cg_advice(start: str | None, cap: str, rtol: str, closer: str) -> str:
    """What may bring an unconverged cg to its tolerance: a larger cap, a looser rtol, and
    the EK-FAC-preconditioned start unless the solve already used it."""
    if start == "preconditioned":
        return f"raise {cap} or loosen {rtol}"
    return f"raise {cap}, loosen {rtol} or start closer ({closer})"


@dataclass(frozen=True)
class UnconvergedSolve:
    """One (checkpoint, batch) cell of an analysis whose cg solve missed its tolerance."""

    checkpoint: int  # index s
    batch: int  # index b
    worst_residual: float
    rtol: float


def unconverged_solves(
    diagnostics: Sequence[Sequence[Mapping[str, Any]]],
) -> list[UnconvergedSolve]:
    """The cells of a result's diagnostics ([S][B] dicts, as cached) with ``converged``
    False, worst first; empty for converged cg and for the other estimators."""
    found = []
    for s, row in enumerate(diagnostics):
        for b, cell in enumerate(row):
            if cell.get("converged") is not False:
                continue
            worst = cell.get("worst_residual")
            if worst is None:  # results cached before the field existed
                worst = max(cell.get("residuals") or [float("nan")])
            found.append(UnconvergedSolve(s, b, float(worst), float(cell.get("rtol") or 0.0)))
    return sorted(found, key=lambda u: -u.worst_residual)


def convergence_summary(
    diagnostics: Sequence[Sequence[Mapping[str, Any]]],
    checkpoints: Sequence[str],
    trajectories: Sequence[int] = (),
) -> str | None:
    """What the CLI and the dashboard show for a result whose cg solves did not all reach
    rtol (None when they did, or for another estimator). ``trajectories``: the request's, so
    the worst batch is named as the user chose it (``--trajectories`` counts from 0; a
    "batch 1" read as trajectory 1)."""
    bad = unconverged_solves(diagnostics)
    if not bad:
        return None
    cells = sum(len(row) for row in diagnostics)
    worst = bad[0]
    name = checkpoints[worst.checkpoint] if worst.checkpoint < len(checkpoints) else "?"
    where = (
        f"test trajectory {trajectories[worst.batch]}"
        if worst.batch < len(trajectories)
        else f"batch {worst.batch + 1}"
    )
    # not "use the default estimator": its residuals are larger still, and reported, not bound
    start = diagnostics[worst.checkpoint][worst.batch].get("cg_start")
    return (
        f"cg did not converge in {len(bad)} of {cells} (checkpoint, batch) solves; worst "
        f"relative residual {worst.worst_residual:.3g} > rtol={worst.rtol:g} ({name}, {where}): "
        "these influence values are inaccurate; "
        + _cg_advice(start, "--max-iter", "--rtol", "--cg-start preconditioned")
    )


TOP_EIGEN_TOL = 1e-4  # the top eigenvalue's relative Lanczos tol: ample for a box plot


def top_eigenvalue_summary(
    diagnostics: Sequence[Sequence[Mapping[str, Any]]],
    checkpoints: Sequence[str],
    tol: float = TOP_EIGEN_TOL,
) -> str | None:
    """What the CLI and the dashboard show when Lanczos stopped at its cap before the top
    eigenvalue met ``tol`` (relative) in some unit: the value is then a lower bound only.
    None when every unit converged, or for results cached before the bound was kept."""
    bounds = [
        (float(cell["top_eigenvalue_bound"]), s)
        for s, row in enumerate(diagnostics)
        for cell in row
        if "top_eigenvalue_bound" in cell
    ]
    # NaN counts as loose, and as the worst (a sort of tuples with NaN has no order)
    loose = sorted(
        (b for b in bounds if not b[0] <= tol),
        key=lambda b: math.inf if math.isnan(b[0]) else b[0],
        reverse=True,
    )
    if not loose:
        return None
    worst, s = loose[0]
    name = checkpoints[s] if s < len(checkpoints) else "?"
    return (
        f"the top eigenvalue's Lanczos stopped at its step cap unconverged in {len(loose)} of "
        f"{len(bounds)} (checkpoint, batch) units (worst relative bound {worst:.2g} > {tol:g}, "
        f"{name}): read those top eigenvalues as lower bounds"
    )


def result_warnings(
    diagnostics: Sequence[Sequence[Mapping[str, Any]]],
    checkpoints: Sequence[str],
    trajectories: Sequence[int] = (),
) -> list[str]:
    """Every warning a result's diagnostics call for, for the CLI, the dashboard and the
    report alike: unconverged cg solves, then an unconverged top eigenvalue."""
    found = (
        convergence_summary(diagnostics, checkpoints, trajectories),
        top_eigenvalue_summary(diagnostics, checkpoints),
    )
    return [message for message in found if message]


RESIDUAL_CAVEAT = (  # what ekfac-krylov's residuals are, correction_note says (its alone)
    "A residual says how far the system is from solved, not how close Ĥ is to the exact "
    "solve: on small models where the exact solve is computable, the default estimator's Ĥ "
    "correlated with it at Pearson 0.94–0.98 (λ = 1e-4), closer than EK-FAC's, while its "
    "residuals missed the paper's rtol (README: estimators). For the paper's own solve, "
    "choose cg at its rtol"
)
RESIDUAL_POINTER = (  # the CLI's closing line: the caveat in full stood 900 characters long
    "a residual measures the solve, not Ĥ's accuracy (README: estimators; every column's "
    "residual is in the result's .json)"
)


def paper_notation(value: float) -> str:
    """1.5e-2 as the paper writes it (not 0.015 or 1.5e-02)."""
    exponent = math.floor(math.log10(value))
    return f"{round(value / 10**exponent, 6):g}e{exponent}"


def _residuals(diagnostics: Sequence[Sequence[Mapping[str, Any]]]) -> list[float]:
    """Every column's full-system residual over every (checkpoint, batch) solve, sorted."""
    return sorted(
        float(r) for row in diagnostics for cell in row for r in (cell.get("residuals") or ())
    )


def _correction_shares(diagnostics: Sequence[Sequence[Mapping[str, Any]]]) -> list[float]:
    """Every solve's ``residual_correction`` (the correction's norm over the Galerkin
    map's), sorted."""
    return sorted(
        float(c["residual_correction"])
        for row in diagnostics
        for c in row
        if c.get("residual_correction") is not None
    )


def correction_share(diagnostics: Sequence[Sequence[Mapping[str, Any]]]) -> float | None:
    """The median ``residual_correction`` over a result's solves (None without one)."""
    shares = _correction_shares(diagnostics)
    return statistics.median(shares) if shares else None


def correction_note(diagnostics: Sequence[Sequence[Mapping[str, Any]]]) -> str:
    """How large the default's residual correction is beside its Galerkin map (median of
    ``residual_correction`` over the solves), a sentence without its full stop; '' without
    one. Why: on small models it is about the Galerkin map's size, on the demo models
    50–170× it, and then the SMSE map is mostly EK-FAC's reading of the residuals (README:
    estimators)."""
    shares = _correction_shares(diagnostics)
    if not shares:
        return ""
    median = statistics.median(shares)
    text = (
        "The SMSE map adds EK-FAC's estimate of what the Galerkin solution leaves out (the "
        f"residual correction), here {median:.3g}× the Galerkin part's norm (median of "
        f"{len(shares)} solve{'s' if len(shares) != 1 else ''})"
    )
    if median > 1:
        text += (
            ": the map is then mostly EK-FAC's reading of the residuals; a deeper space "
            "(--depth) shrinks that share"
        )
    return text


def _worse_than_zero(diagnostics: Sequence[Sequence[Mapping[str, Any]]]) -> str:
    """What a residual ≥ 1 means (y_p = 0 would have residual 1), and what to do about it."""
    cg = all(cell.get("estimator") == "cg" for row in diagnostics for cell in row)
    return "a residual ≥ 1 is no better than y = 0 by this measure" + (
        ": cg stopped far from its tolerance there (raise max_iter or use the deflated start)"
        if cg
        else ", common for Galerkin solves and no verdict on Ĥ; the paper's own solve is "
        "the cg estimator"
    )


def residual_summary(
    diagnostics: Sequence[Sequence[Mapping[str, Any]]],
    *,
    caveat: bool = True,
    arch: str | None = None,
    brief: bool = False,
    smse_map: bool = False,
) -> str | None:
    """One line on a result's full-system residuals ‖g_B(p) − (η + λI)y_p‖/‖g_B(p)‖ over
    every column of every (checkpoint, batch) solve, against the paper's tolerances, with
    what it does not say (``caveat``: RESIDUAL_CAVEAT); None for estimators without
    residuals (ekfac, euclidean). Why shown: issue 14 asks whether the default already meets
    the paper's tolerance. ``arch`` ("unet" | "vit"): quote only that architecture's
    tolerance (both when None or another architecture). ``brief``: the numbers alone, for
    a caption whose help holds the rest (``residual_help``): every line above the dashboard's
    tabs pushes the maps down, and compare mode has one per group; with ``smse_map`` (the
    result holds the SMSE map, the one corrected) it still says when that map is mostly the
    EK-FAC correction, the main caveat (the CLI prints ``correction_note`` instead)."""
    values = _residuals(diagnostics)
    if not values:
        return None
    median = statistics.median(values)
    quoted = {arch: PAPER_RTOL[arch]} if arch in PAPER_RTOL else PAPER_RTOL
    counts = {a: f"{sum(v <= rtol for v in values)} of {len(values)}" for a, rtol in quoted.items()}
    if len(quoted) == 1:  # 'within the paper's rtol 1.5e-2: 0 of 144' (one line at 1600 px)
        ((a, rtol),) = quoted.items()
        within = f"within the paper's rtol {paper_notation(rtol)}: {counts[a]}"
    else:
        within = "within the paper's rtol: " + ", ".join(
            f"{counts[a]} at {paper_notation(rtol)} ({ARCH_LABELS.get(a, a)})"
            for a, rtol in quoted.items()
        )
    # a cg solve at another rtol than the paper's: its own first (a count against 5e-2
    # beside --rtol 1.5e-2 read as the solve's)
    own = {cell.get("rtol") for row in diagnostics for cell in row} - {None}
    if len(own) == 1 and (rtol := float(own.pop())) not in quoted.values():
        within = (
            f"within the solve's rtol {paper_notation(rtol)}: "
            f"{sum(v <= rtol for v in values)} of {len(values)}; {within}"
        )
    if brief:  # a worst ≥ 1 read as a number alone looks like a mere large error
        worst = f"{values[-1]:.3g}" + (" (≥ 1: no better than y = 0)" if values[-1] >= 1 else "")
        line = f"full-system residual median {median:.3g}, worst {worst}; {within}"
        share = correction_share(diagnostics) if smse_map else None
        if share is not None and share > 1:  # a main caveat: not for the help alone
            line += f"; the SMSE map is mostly EK-FAC's residual correction ({share:.3g}×)"
        return line
    line = (
        f"full-system residual ‖g − (η + λI)y‖/‖g‖ over {len(values)} columns: median "
        f"{median:.3g}, worst {values[-1]:.3g}; {within}"
    )
    if values[-1] >= 1:
        line += "; " + _worse_than_zero(diagnostics)
    if correction := correction_note(diagnostics):
        line += f". {correction}"
    return f"{line}. {RESIDUAL_CAVEAT}." if caveat else line


def residual_help(diagnostics: Sequence[Sequence[Mapping[str, Any]]]) -> str | None:
    """What ``residual_summary(..., brief=True)`` leaves to its help: the definition, what a
    residual ≥ 1 means when there is one, and RESIDUAL_CAVEAT; None without residuals."""
    values = _residuals(diagnostics)
    if not values:
        return None
    worst = values[-1]
    worse = f" The worst is {worst:.3g}: {_worse_than_zero(diagnostics)}." if worst >= 1 else ""
    correction = correction_note(diagnostics)
    return (
        "Full-system residual ‖g − (η + λI)y‖/‖g‖ of each column y of each (checkpoint, "
        f"batch) solve, {len(values)} in all.{worse} {correction + '. ' if correction else ''}"
        f"{RESIDUAL_CAVEAT}."
    )
