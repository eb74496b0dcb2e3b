"""A prototype toward issue 14's speed target, not an estimator the product offers: the default's
two-level form with a Galerkin space of rank k instead of ≈ 2N.

The default (`ekfac-krylov` depth 1) computes Ĥ = GᵀQE⁻¹QᵀG + RᵀM̃⁻¹R, the Galerkin solve in
V = span(Q) plus EK-FAC's reading of its residuals R = G − AY (A = η + λI, M̃ = η̃ + λI, E =
QᵀAQ), with V = span(G) ∪ M̃⁻¹G: ≈ 2N batch JVPs and N batch VJPs, 11–17× EK-FAC's time on
the demo models. k = 0 is EK-FAC itself. Here V is the top-k singular subspace of M̃⁻¹G (the
directions EK-FAC's solutions use most): k JVPs for JQ and k VJPs for AQ = Jᵀ(JQ) + λQ, and
then R = G − (AQ)ᵀE⁻¹QG costs no product. So the question: how small can k be and keep the
default's fidelity, and what does it cost against EK-FAC side by side?

Parts: ``fidelity`` (the four small dense-reference models of bench_fidelity, λ = 1e-4 and
1e-2, Pearson / median row Spearman of the standardised Ĥ against the exact solve, beside
EK-FAC and the default); ``cost`` (seconds on the trained demo checkpoints, N = 48 at 32²,
best of two, beside ``ekfac`` and the default in the same run); ``columns`` (opt-in: the
demo models against bench_fidelity's near-exact column reference). What it leaves out: the
subspace spectrum (the dominant-eigenvalue share is defined on span(G): s more JVPs). Its
full-system residuals come free (R is g − Ay exactly). Both parts by default (``all``).
Run: python -m bench.bench_twolevel [--part fidelity|cost|all|columns] [--checkpoint ARCH=DIR]
[--column C ...]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from bench.bench_fidelity import MODELS
from bench.bench_influence import euler_batch
from bench.common import ratio_rows, write_result
from bench.reference_rows import agreement
from coherence.analysis.autodiff import BatchJacobian, FlatModel, evaluation_mode
from coherence.analysis.influence import compute_influence
from coherence.analysis.kfac import fit_eigenbasis
from coherence.analysis.standardization import standardize
from coherence.surrogates import checkpoint as ckpt
from tests.analysis.fixtures import train_small

RANKS = (0, 4, 8, 16, 32)
DAMPINGS = (1e-4, 1e-2)


def two_level_influence(
    model: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, damping: float, rank: int
) -> torch.Tensor:
    """Raw Ĥ·D [N, N] (rows response, columns perturbation) of the rank-``rank`` two-level
    form for the per-example gradients ``g`` [N, P] (module docstring)."""
    with evaluation_mode(model), torch.no_grad():
        fm = FlatModel(model)
        metric = fit_eigenbasis(fm, x)
        mg = metric.solve(g, damping)
        if rank == 0:
            return g @ mg.T
        gram = (mg @ mg.T).double()  # the top singular subspace of the rows, from the N × N Gram
        values, vectors = torch.linalg.eigh(gram)
        top = vectors[:, -rank:] / values[-rank:].clamp_min(1e-300).sqrt()
        q = (top.T.to(mg.dtype) @ mg).contiguous()  # [k, P], orthonormal rows
        jacobian = BatchJacobian(fm, x)
        aq = torch.stack([jacobian.vjp(jacobian.jvp(row)) for row in q]) + damping * q
        c = torch.linalg.solve((q @ aq.T).double(), (q @ g.T).double()).to(g.dtype)  # [k, N]
        r = g - c.T @ aq
        return (g @ q.T) @ c + r @ metric.solve(r, damping).T


def _label(rank: int) -> str:
    return f"two-level k={rank}" + (" (= ekfac)" if rank == 0 else "")


def fidelity_rows() -> list[dict[str, Any]]:
    rows = []
    for hidden, seed in MODELS:
        small = train_small(hidden, seed)
        reference = small.reference
        g = reference.grads("smse").to(small.inputs.dtype)
        for damping in DAMPINGS:
            exact = standardize(reference.full("smse", damping))
            default = compute_influence(small.model, small.inputs, small.targets, damping=damping)
            counts = (default.diagnostics.batch_jvps, default.diagnostics.batch_vjps)
            cases = [("ekfac-krylov (default)", default.H, counts)]
            for rank in RANKS:  # k JVPs and k VJPs
                h = two_level_influence(small.model, small.inputs, g, damping, rank) / reference.d
                cases.append((_label(rank), h, (rank, rank)))
            for setting, h, products in cases:
                pearson, spearman = agreement(standardize(h), exact)
                rows.append(
                    {
                        "P": g.shape[1],
                        "seed": seed,
                        "lambda": damping,
                        "setting": setting,
                        "pearson": pearson,
                        "spearman": spearman,
                        "jvps": products[0],
                        "vjps": products[1],
                    }
                )
                print(rows[-1], flush=True)
    return rows


def _best_of_two(run) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(2):
        clock = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - clock)
    return best


def _model_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Each setting's best-of-two seconds on one model, side by side."""
    from coherence.analysis.influence import _gradients  # what every estimator starts from
    from coherence.analysis.request import InfluenceOptions

    options = InfluenceOptions(estimator="euclidean")

    def two_level(rank: int) -> None:
        with evaluation_mode(model):
            g = _gradients(FlatModel(model), x, y, options, {}, lambda *_: None)
        two_level_influence(model, x, next(iter(g.values())), 1e-4, rank)

    compute_influence(model, x, y, estimator="subspace")  # trace once, as a job does
    timed = {
        "ekfac": _best_of_two(lambda: compute_influence(model, x, y, estimator="ekfac")),
        "ekfac-krylov (default)": _best_of_two(lambda: compute_influence(model, x, y)),
    }
    for rank in RANKS[1:]:
        timed[_label(rank)] = _best_of_two(lambda rank=rank: two_level(rank))
    return timed


def cost_rows(checkpoints: dict[str, str]) -> list[dict[str, Any]]:
    """Seconds per (checkpoint, batch) from the model to Ĥ, the per-example gradients
    included for every setting (as ``compute_influence`` times them)."""
    x, y = euler_batch()
    rows = []
    for arch in ("unet", "vit"):
        model, _ = ckpt.load(checkpoints.get(arch, f"workspace/checkpoints/{arch}_demo_s10"))
        rows += ratio_rows(f"{arch} (trained)", _model_seconds(model, x, y), "ekfac", "x_ekfac")
    return rows


def columns_rows(checkpoints: dict[str, str], columns: list[int]) -> list[dict[str, Any]]:
    """The rank-k form at demo scale against the near-exact column reference of
    bench_fidelity's ``columns`` part (EK-FAC-preconditioned cg to rtol 3e-3, cap 800),
    beside EK-FAC and the default on the same columns."""
    from bench.bench_fidelity import column_agreement, column_reference, smse_gradients

    x, y = euler_batch()
    rows = []
    for arch in ("unet", "vit"):
        model, _ = ckpt.load(checkpoints.get(arch, f"workspace/checkpoints/{arch}_demo_s10"))
        reference = column_reference(model, x, y, columns, 3e-3, 800)
        _, g = smse_gradients(model, x, y)
        default = compute_influence(model, x, y).H_by_response["smse"][:, columns]
        cases = [("ekfac-krylov (default)", default)]
        cases += [
            (_label(k), two_level_influence(model, x, g, 1e-4, k)[:, columns])
            for k in (0, 8, 16, 32)
        ]
        for setting, h in cases:
            pearson, spearman = column_agreement(h, reference["h"])
            rows.append(
                {
                    "model": f"{arch} (trained)",
                    "columns": columns,
                    "setting": setting,
                    "pearson": pearson,
                    "spearman": spearman,
                    "reference_converged": reference["converged"],
                    "reference_residual_max": reference["residual_max"],
                }
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part", choices=("fidelity", "cost", "all", "columns"), default="all"
    )  # columns: opt-in (≈ 15 minutes on 2 cores), not in all
    parser.add_argument("--column", type=int, action="append", help="columns: which (0 … N-1)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="ARCH=DIR")
    args = parser.parse_args()
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    if args.part in ("fidelity", "all"):
        write_result(
            "twolevel_fidelity",
            "Two-level form with a rank-k Galerkin space: fidelity (issue 14 prototype)",
            fidelity_rows(),
            "Pearson / median row Spearman of standardised Ĥ vs the exact (η + λI)⁻¹ solve on "
            "the four small models of fidelity.json. jvps/vjps: batch products (k each for "
            "the two-level form; k = 0 is EK-FAC). Target: ≥ 0.95 / ≥ 0.9.",
        )
    if args.part == "columns":
        chosen = args.column or [0, 24, 47]
        write_result(
            "twolevel_columns",
            "Two-level form with a rank-k Galerkin space at demo scale (issue 14 prototype)",
            columns_rows(checkpoints, chosen),
            f"λ = 1e-4, N = 48; columns {chosen} of H solved by EK-FAC-preconditioned cg to "
            "rtol 3e-3 (cap 800) as in fidelity_columns.json; Pearson over the N×K block, "
            "median per-column Spearman over the N responses.",
        )
    if args.part in ("cost", "all"):
        write_result(
            "twolevel_cost",
            "Two-level form with a rank-k Galerkin space: seconds (issue 14 prototype)",
            cost_rows(checkpoints),
            "N = 48 at 32², λ = 1e-4, best of two, one batch, after a warm-up that traces the "
            "tangent program; the per-example gradients are in every figure. x_ekfac: "
            "seconds / ekfac's in the same run.",
        )


if __name__ == "__main__":
    main()
