"""Fidelity and cost of the estimators against the paper's full solve (issue 14).

1. ``fidelity``: small trained models where the exact dense (η + λI)⁻¹ solve is computable
   (TinyConv on compressible Euler at 8², N = 48, P = 0.9k–1.8k; tests/analysis/fixtures.py),
   λ = 1e-4 and 1e-2. Per setting (euclidean, subspace, krylov depth 2/4/6/8): Pearson of the
   standardised Ĥ with the exact one over all entries, median per-row Spearman (SMSE, and the
   same for the mass and energy maps), ekfac-krylov's residual-correction share, the median
   and largest full-system residual, batch JVPs and VJPs and their forward-pass equivalents
   (JVP ≈ 2.2, VJP ≈ 2 batch forwards), seconds. Target (issue 14): Pearson ≥ 0.95,
   Spearman ≥ 0.9.
1a. ``overparam``: the same settings on trained TinyConvs with more parameters than outputs
   (N = 12, P = 4.7k and 5.8k = 1.5× and 1.9× N·D, N·D = 3072; the dense P×P reference is
   still cheap): η (rank ≤ N·D < P) is singular there, as on the real surrogates (P ≫ N·D),
   while the ``fidelity`` models have P < N·D. G lies in range(η), but EK-FAC's M̃ (the
   default's preconditioner) does not know η's null space: does the default's fidelity carry
   over? Rows add P, N, D, N·D and η's numerical rank.
1b. ``tolerance``: on the same models, the agreement of the exact solve in float32 and of
   solves with a random residual of relative size 1e-2 … 3e-4: how exact any solver must be
   to meet the target.
1c. ``starts``: cg iterations summed over the 48 columns on the P = 880 model (λ = 1e-4) from
   each start (cold, deflated after depth 1, 2, 4, preconditioned), at rtol 5e-2 and 1.5e-2.
2. ``cg``: cold vs deflated-start (and EK-FAC-preconditioned) cg on the demo UNet and ViT
   (N = 48, 32², untrained demo presets unless --checkpoint names trained ones) at rtol 5e-2
   and 1.5e-2, on ``--columns`` columns spread over the batch (a cold column costs one batch
   JVP + VJP per iteration: a full cold run on the demo UNet would take hours here):
   iterations per column, products, seconds, converged. Target: ≥ 10× fewer iterations.
2b. ``columns`` (opt-in, not in ``all``): the demo UNet and ViT have no dense reference, so a
   few columns of H (``--column``, default 6 spread over the batch) are solved near-exactly
   by EK-FAC-preconditioned cg to ``--rtol`` (default 1e-3, cap ``--cap`` 3000), and each
   estimator's same columns are compared with them (Pearson over the block, median
   per-column Spearman); first on the hardest small model, where the exact H checks that
   reference. Does the default's fidelity carry over from the small models?
2c. ``rows`` (opt-in): the issue's own measure (row-standardised Ĥ, per-row Spearman) on the
   demo models, from reference columns kept on disk and added to run by run
   (``bench/reference_rows.py``: H is symmetric, so a solved column is a whole row); first the
   sampled measure against the whole one on the hardest small model. ``--max-columns`` bounds
   the columns one run solves (Ctrl-C keeps every finished chunk); ``--cap`` defaults to 1200.
3. ``cost``: seconds of each estimator side by side on the trained demo checkpoints
   (``workspace/checkpoints/{unet,vit}_demo_s10`` unless --checkpoint names others; N = 48,
   32², one batch, after one warm-up that traces the tangent program), best of two runs:
   euclidean, ekfac, subspace, ekfac-krylov (depth 1, 2), krylov (depth 2, 4). The issue's
   question: is a setting more faithful than EK-FAC also faster than it?

Run: python -m bench.bench_fidelity [--part fidelity|overparam|tolerance|starts|cg|cost|columns|all]
     [--quick] [--arch unet|vit] [--checkpoint ARCH=DIR] [--columns K] [--rtol R] [--cap N]
     [--start cold|deflated|preconditioned] [--column C ...] [--only ESTIMATOR ...]
     [--max-columns K]  (rows)
(--start: run one start only, written to cg_start_<arch>_<start>.json; --quick: one small
model, depths 2 and 4, cg on the UNet at rtol 5e-2 with max_iter 50).
Figures from a shared or single-threaded machine are indicative only.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from bench.bench_influence import demo_model, euler_batch
from bench.common import write_result
from bench.reference_rows import (
    ReferenceStore,
    agreement,
    column_solver,
    fingerprint,
    reference_summary,
    row_agreement,
    solve_columns,
    store_path,
)
from coherence.analysis.autodiff import BatchJacobian, FlatModel, per_example_vjps
from coherence.analysis.influence import compute_influence
from coherence.analysis.metric_solve import CountedJacobian
from coherence.analysis.observables import Response, residual
from coherence.analysis.request import InfluenceOptions
from coherence.analysis.standardization import standardize
from coherence.surrogates import checkpoint as ckpt
from tests.analysis.fixtures import (
    DenseReference,
    TrainedSmall,
    train_small,
)

JVP_FORWARDS, VJP_FORWARDS = 2.2, 2.0
COLD_CAP = {5e-2: 400, 1.5e-2: 800}  # cg iterations per column: a capped cold run is a bound
MODELS = ((12, 2), (16, 0), (24, 1), (24, 0))  # (hidden, seed): P = 880, 1172, 1756, 1756
# every response: SMSE is the target's; mass and energy say how far the conservation panels are
RESPONSES = ("smse", "mass", "energy")


def _products(diag: Any) -> dict[str, Any]:
    jvps, vjps = diag.batch_jvps or 0, diag.batch_vjps or 0
    return {
        "jvps": jvps,
        "vjps": vjps,
        "forwards": JVP_FORWARDS * jvps + VJP_FORWARDS * vjps,
        "seconds": diag.seconds,
    }


def fidelity_settings(quick: bool, only: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """The settings the ``fidelity`` (and ``overparam``) part compares with the exact solve;
    ``only``: the settings of these estimators alone."""
    settings = [("euclidean", {}), ("subspace", {}), ("subspace", {"energy_threshold": 1.0})]
    settings += [("krylov", {"depth": d}) for d in ((2, 4) if quick else (2, 4, 6, 8))]
    # EK-FAC alone, and the Galerkin solve in its preconditioned Krylov space
    settings += [("ekfac", {})]
    settings += [("ekfac-krylov", {"depth": d}) for d in ((1, 2) if quick else (1, 2, 4))]
    # the paper's solve at its own tolerances (deflated start, depth 4): how far from exact
    settings += [("cg", {"rtol": rtol, "max_iter": 5000}) for rtol in (5e-2, 1.5e-2)]
    # the same tolerances from the EK-FAC-preconditioned start, EK-FAC-preconditioned
    settings += [
        ("cg", {"rtol": rtol, "max_iter": 5000, "cg_start": "preconditioned"})
        for rtol in (5e-2, 1.5e-2)
    ]
    if only:
        settings = [(e, o) for e, o in settings if e in only]
    return settings


def setting_rows(
    small: TrainedSmall, settings: list[tuple[str, dict]], meta: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per (λ, setting) on one small model: ``meta``, then the agreement of each
    setting's standardised Ĥ with the exact dense one, its residuals and products."""
    rows = []
    for damping in (1e-4, 1e-2):
        exact = {r: standardize(small.reference.full(r, damping)) for r in RESPONSES}
        for estimator, options in settings:
            result = compute_influence(
                small.model,
                small.inputs,
                small.targets,
                response=RESPONSES,
                estimator=estimator,
                damping=damping,
                **options,
            )
            scores = {
                r: agreement(standardize(result.H_by_response[r]), exact[r]) for r in RESPONSES
            }
            res = result.diagnostics.residuals or [float("nan")]
            rows.append(
                {
                    **meta,
                    "lambda": damping,
                    "setting": estimator + "".join(f" {k}={v}" for k, v in options.items()),
                    "pearson": scores["smse"][0],
                    "spearman": scores["smse"][1],
                    **{
                        f"{name}_{r}": scores[r][i]
                        for r in RESPONSES[1:]
                        for i, name in enumerate(("pearson", "spearman"))
                    },
                    "residual_correction": result.diagnostics.residual_correction,
                    "residual_median": float(np.median(res)),
                    "residual_max": float(np.max(res)),
                    **_products(result.diagnostics),
                }
            )
            print(rows[-1], flush=True)
    return rows


def fidelity_rows(quick: bool, only: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One row per (model, λ, setting); ``only``: the settings of these estimators alone."""
    settings = fidelity_settings(quick, only)
    rows = []
    for hidden, seed in MODELS[:1] if quick else MODELS:
        small = train_small(hidden, seed)
        meta = {"P": small.reference.jac.shape[2], "seed": seed}
        rows += setting_rows(small, settings, meta)
    return rows


def start_rows(quick: bool) -> list[dict[str, Any]]:
    """cg iterations summed over the N = 48 columns on the P = 880 small model (λ = 1e-4)
    from each start: cold, deflated after span(G) (depth 1), depth 2 and 4, and the
    EK-FAC-preconditioned start (depth 4), at the paper's two tolerances, with each solution's
    Pearson / row Spearman against the exact Ĥ. Why a Krylov start: each block removes more
    of the large eigenvalues of η that make cold cg slow."""
    small = train_small(*MODELS[0])
    exact = standardize(small.reference.full("smse", 1e-4))
    starts = [("cold", None), ("deflated", 1), ("deflated", 2), ("deflated", 4)]
    starts += [("preconditioned", 4)]
    rows = []
    for rtol in (5e-2,) if quick else (5e-2, 1.5e-2):
        for start, depth in starts:
            options = {"cg_start": start} | ({} if depth is None else {"depth": depth})
            result = compute_influence(
                small.model,
                small.inputs,
                small.targets,
                estimator="cg",
                damping=1e-4,
                rtol=rtol,
                max_iter=5000,
                **options,
            )
            diag = result.diagnostics
            pearson, spearman = agreement(standardize(result.H), exact)
            rows.append(
                {
                    "P": small.reference.jac.shape[2],
                    "lambda": 1e-4,
                    "rtol": rtol,
                    "start": start,
                    "depth": depth,
                    "iterations_sum": int(sum(diag.iterations)),
                    "iterations_max": int(max(diag.iterations)),
                    "converged": bool(diag.converged),
                    "pearson": pearson,
                    "spearman": spearman,
                    **_products(diag),
                }
            )
            print(rows[-1], flush=True)
    return rows


# (hidden, seed) at N = 12, D = 256: P = 4676 and 5844, 1.5× and 1.9× N·D = 3072 (η singular)
OVERPARAM_MODELS = ((64, 0), (80, 1))
OVERPARAM_TIMES = (0, 4, 8, 12)  # analysis steps of the test trajectory: 3 classes × 4 = 12


class _CachedReference(DenseReference):
    """The fixtures' dense reference with η formed once (P ≈ 6k: each einsum is seconds)."""

    @functools.cached_property
    def eta(self) -> torch.Tensor:  # type: ignore[override]
        return torch.einsum("ndp,ndq->pq", self.jac, self.jac)


def train_overparam(hidden: int, seed: int) -> TrainedSmall:
    """``train_small``'s TinyConv, data and training, analysed on N = 12 (3 classes × steps
    OVERPARAM_TIMES, time-major) so that P > N·D, with η formed once in its reference."""
    small = train_small(hidden, seed, times=OVERPARAM_TIMES)
    cached = _CachedReference(small.reference.jac, small.reference.residuals)
    return dataclasses.replace(small, reference=cached)


def overparam_rows(quick: bool, only: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The ``fidelity`` settings on trained TinyConvs with P > N·D (η singular, as on the
    real surrogates): one row per (model, λ, setting), with P, N, D, N·D and η's spectrum."""
    settings = fidelity_settings(quick, only)
    rows = []
    for hidden, seed in OVERPARAM_MODELS[:1] if quick else OVERPARAM_MODELS:
        clock = time.perf_counter()
        small = train_overparam(hidden, seed)
        n, d, p = small.reference.jac.shape
        eigenvalues = torch.linalg.eigvalsh(small.reference.eta)
        top = float(eigenvalues[-1])
        meta = {
            "model": f"TinyConv hidden {hidden}",
            "seed": seed,
            "P": p,
            "N": n,
            "D": d,
            "ND": n * d,
            "P_over_ND": p / (n * d),
            # numerical rank (eigenvalues > 1e-10·λ_max) and λ_max of η = Σ J_nᵀJ_n
            "rank_eta": int((eigenvalues > 1e-10 * top).sum()),
            "lambda_max": top,
        }
        print(meta, f"model and reference {time.perf_counter() - clock:.0f} s", flush=True)
        rows += setting_rows(small, settings, meta)
    return rows


TOLERANCES = (1e-2, 3e-3, 1e-3, 3e-4)  # full-system relative residuals of the perturbed solves


def tolerance_rows(quick: bool) -> list[dict[str, Any]]:
    """How exact must a solve be to meet the target? Per model and λ: the exact solve in
    float32 (the pipeline's precision), then the exact float64 solve with an error whose
    full-system residual is a random direction of relative size ρ per column (median over
    3 draws): the agreement any solver stopped at that residual can expect."""
    rows = []
    for hidden, seed in MODELS[:1] if quick else MODELS:
        reference = train_small(hidden, seed).reference
        g = reference.grads("smse")
        system = reference.eta + torch.eye(g.shape[1], dtype=g.dtype)  # λ added below
        for damping in (1e-4, 1e-2):
            metric = system + (damping - 1.0) * torch.eye(g.shape[1], dtype=g.dtype)
            exact = standardize(reference.full("smse", damping))
            y = torch.linalg.solve(metric, g.T)
            y32 = torch.linalg.solve(metric.float(), g.T.float()).double()
            cases = [("exact solve in float32", [y32])]
            for rho in TOLERANCES:
                draws = []
                for draw in range(3):
                    noise = torch.randn(g.T.shape, generator=torch.Generator().manual_seed(draw))
                    r = noise.double() / noise.double().norm(dim=0) * g.T.norm(dim=0) * rho
                    draws.append(y + torch.linalg.solve(metric, r))
                cases.append((f"residual {rho:g} (random direction)", draws))
            for setting, solutions in cases:
                scores = np.array(
                    [agreement(standardize(g @ x / reference.d), exact) for x in solutions]
                )
                pearson, spearman = np.median(scores, axis=0)
                rows.append(
                    {
                        "P": g.shape[1],
                        "seed": seed,
                        "lambda": damping,
                        "setting": setting,
                        "pearson": float(pearson),
                        "spearman": float(spearman),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def _column_cg(
    options: InfluenceOptions,
    products: CountedJacobian,
    g: torch.Tensor,
    columns: list[int],
    shape: torch.Size,
) -> dict[str, Any]:
    """``reference_rows.column_solver`` on ``columns``, timed, as a result row."""
    clock = time.perf_counter()
    cg = column_solver(options, products, g, shape)(columns)
    return {
        "solution": cg.solution,
        "iters": list(cg.iterations),
        "converged": cg.converged,
        "residual_max": max(cg.residuals),
        "seconds": time.perf_counter() - clock,
    }


COST_SETTINGS = (
    ("euclidean", {}),
    ("ekfac", {}),
    ("subspace", {}),
    ("ekfac-krylov", {"depth": 1}),
    ("ekfac-krylov", {"depth": 2}),
    ("krylov", {"depth": 2}),
    ("krylov", {"depth": 4}),
)


def cost_rows(
    archs: list[str], checkpoints: dict[str, str], device: str = "cpu"
) -> list[dict[str, Any]]:
    """Seconds per estimator on one trained demo checkpoint per architecture (docstring)."""
    x, y = (t.to(device) for t in euler_batch())
    rows = []
    for arch in archs:
        model, _ = ckpt.load(checkpoints.get(arch, f"workspace/checkpoints/{arch}_demo_s10"))
        model.to(device)
        compute_influence(model, x, y, estimator="subspace")  # trace once, as a job does
        for estimator, options in COST_SETTINGS:
            best, result = float("inf"), None
            for _ in range(2):
                clock = time.perf_counter()
                result = compute_influence(model, x, y, estimator=estimator, **options)
                if x.is_cuda:
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - clock)
            assert result is not None
            rows.append(
                {
                    "model": f"{arch} (trained)",
                    "setting": estimator + "".join(f" {k}={v}" for k, v in options.items()),
                    "seconds": best,
                    "jvps": result.diagnostics.batch_jvps or 0,
                    "vjps": result.diagnostics.batch_vjps or 0,
                }
            )
            print(rows[-1], flush=True)
        ekfac = next(
            r["seconds"]
            for r in rows
            if r["model"] == f"{arch} (trained)" and r["setting"] == "ekfac"
        )
        for row in rows:
            if row["model"] == f"{arch} (trained)":
                row["x_ekfac"] = row["seconds"] / ekfac
    return rows


def smse_gradients(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[FlatModel, torch.Tensor]:
    """The flat model (eval mode) and the per-example SMSE gradients g_B(n) [N, P]: the
    right-hand sides every cg column solves."""
    model.eval()
    fm = FlatModel(model)
    with torch.no_grad():
        prediction = fm(fm.theta, x)
    (g,) = per_example_vjps(fm, x, [residual(Response.SMSE, prediction, x, y)])
    return fm, g


def cg_rows(
    archs: list[str],
    rtols: list[float],
    quick: bool,
    checkpoints: dict[str, str],
    n_columns: int,
    cold_cap: int | None,
    starts: tuple[str, ...] = ("cold", "deflated"),
    chosen: tuple[int, ...] = (),
) -> list[dict[str, Any]]:
    """Cold vs deflated cg per column, at the paper's tolerances (see the module docstring)."""
    x, y = euler_batch()
    rows = []
    for arch in archs:
        if arch in checkpoints:
            model, _ = ckpt.load(checkpoints[arch])
        else:
            model = demo_model(arch, 10, x)
        fm, g = smse_gradients(model, x, y)
        columns = sorted(
            set(chosen)
            or {round(i * (len(x) - 1) / max(n_columns - 1, 1)) for i in range(n_columns)}
        )
        for rtol in rtols:
            cap = cold_cap or (50 if quick else COLD_CAP[rtol])
            for start in starts:
                options = InfluenceOptions(
                    estimator="cg", rtol=rtol, cg_start=start, max_iter=cap, damping=1e-4
                )
                products = CountedJacobian(BatchJacobian(fm, x))
                out = _column_cg(options, products, g, columns, x.shape)
                rows.append(
                    {
                        "model": arch + (" (trained)" if arch in checkpoints else " (untrained)"),
                        "rtol": rtol,
                        "start": start,
                        "columns": columns,
                        "iters": out["iters"],
                        "iters_max": max(out["iters"]),
                        "iters_median": float(np.median(out["iters"])),
                        "cap": cap,
                        "converged": out["converged"],
                        "residual_max": out["residual_max"],
                        "jvps": products.jvps,
                        "vjps": products.vjps,
                        "seconds": out["seconds"],
                    }
                )
                print(rows[-1], flush=True)
    return rows


# settings compared with a near-exact solve of a few columns on the demo models
COLUMN_SETTINGS = (
    ("euclidean", {}),
    ("subspace", {}),
    ("ekfac", {}),
    ("ekfac-krylov", {}),
    ("ekfac-krylov", {"depth": 2}),
    ("krylov", {"depth": 4}),
)


def column_reference(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    columns: list[int],
    rtol: float,
    cap: int,
) -> dict[str, Any]:
    """H[:, columns]·D of the full solve, from cg --cg-start preconditioned (EK-FAC) to
    ``rtol``: the reference where no dense solve fits (the demo models, P ≈ 0.15M–0.3M)."""
    fm, g = smse_gradients(model, x, y)
    options = InfluenceOptions(
        estimator="cg", rtol=rtol, cg_start="preconditioned", max_iter=cap, damping=1e-4
    )
    out = _column_cg(options, CountedJacobian(BatchJacobian(fm, x)), g, columns, x.shape)
    h = g.double() @ out.pop("solution").double().T  # [N, K]: rows = responses
    return {"h": h, **out}


def column_agreement(h: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Pearson over the N×K entries and median per-column Spearman (over the N responses) of
    two column blocks of H: no row standardisation, which needs every column."""
    h, reference = h.double(), reference.double()
    per_column = [spearmanr(h[:, k], reference[:, k])[0] for k in range(h.shape[1])]
    pearson = np.corrcoef(h.flatten().numpy(), reference.flatten().numpy())[0, 1]
    return float(pearson), float(np.median(per_column))


def _column_rows(
    label: str,
    batch: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
    columns: list[int],
    rtol: float,
    cap: int,
    exact: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Each COLUMN_SETTINGS estimate's columns against the cg reference (and, where given,
    the reference itself against the exact dense H: how near-exact it is)."""
    model, x, y = batch
    ref = column_reference(model, x, y, columns, rtol, cap)
    meta = {"model": label, "columns": columns, "reference_rtol": rtol}
    rows = [
        {
            **meta,
            "setting": f"reference: cg --cg-start preconditioned rtol={rtol}",
            "iters": ref["iters"],
            "converged": ref["converged"],
            "residual_max": ref["residual_max"],
            "seconds": ref["seconds"],
        }
    ]
    if exact is not None:
        pearson, spearman = column_agreement(ref["h"], exact[:, columns])
        rows[0] |= {"pearson_vs_exact": pearson, "spearman_vs_exact": spearman}
    print(rows[-1], flush=True)
    for estimator, options in COLUMN_SETTINGS:
        result = compute_influence(model, x, y, estimator=estimator, **options)
        h = result.H_by_response["smse"][:, columns]
        pearson, spearman = column_agreement(h, ref["h"])
        row = {
            **meta,
            "setting": estimator + "".join(f" {k}={v}" for k, v in options.items()),
            "pearson": pearson,
            "spearman": spearman,
            "residual_correction": result.diagnostics.residual_correction,
            "seconds": result.diagnostics.seconds,
        }
        if exact is not None:  # the same block against the exact solve
            row["pearson_vs_exact"], row["spearman_vs_exact"] = column_agreement(
                h, exact[:, columns]
            )
        rows.append(row)
        print(rows[-1], flush=True)
    return rows


def columns_rows(
    archs: list[str], checkpoints: dict[str, str], columns: list[int], rtol: float, cap: int
) -> list[dict[str, Any]]:
    """Fidelity on the trained demo models against a near-exact solve of a few columns, after
    the same procedure on the hardest small model, where the exact dense H checks it."""
    small = train_small(*MODELS[-1])
    exact = small.reference.full("smse", 1e-4)
    label = f"small P = {small.reference.jac.shape[2]} (seed {MODELS[-1][1]})"
    batch = (small.model, small.inputs, small.targets)
    rows = _column_rows(label, batch, columns, rtol, cap, exact)
    x, y = euler_batch()
    for arch in archs:
        model, _ = ckpt.load(checkpoints.get(arch, f"workspace/checkpoints/{arch}_demo_s10"))
        rows += _column_rows(f"{arch} (trained)", (model, x, y), columns, rtol, cap)
    return rows


def spread_order(times: int = 16, classes: int = 3) -> list[int]:
    """All N = times·classes columns (time-major: p = t·classes + c) in an order whose every
    prefix spreads over the window and the classes: times in van der Corput order, the class
    shifted on each pass, so that a run stopped early still samples the whole batch."""
    bits = max(times - 1, 1).bit_length()
    by_time = sorted(range(times), key=lambda t: int(f"{t:0{bits}b}"[::-1], 2))
    return [
        by_time[k % times] * classes + (k + k // times) % classes for k in range(times * classes)
    ]


def _row_settings(
    label: str,
    batch: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
    reference: torch.Tensor,
    solved: list[int],
    exact: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Each COLUMN_SETTINGS estimate on the solved rows against the reference rows (and, on a
    small model, against the exact H: on the same rows and on all of them)."""
    model, x, y = batch
    rows = []
    for estimator, options in COLUMN_SETTINGS:
        result = compute_influence(model, x, y, estimator=estimator, **options)
        h = result.H_by_response["smse"]
        pearson, spearman = row_agreement(h[solved], reference)
        row = {
            "model": label,
            "setting": estimator + "".join(f" {k}={v}" for k, v in options.items()),
            "rows": len(solved),
            "pearson": pearson,
            "spearman": spearman,
            "seconds": result.diagnostics.seconds,
        }
        if exact is not None:
            row["pearson_vs_exact"], row["spearman_vs_exact"] = row_agreement(
                h[solved], exact[solved]
            )
            row["pearson_all_rows"], row["spearman_all_rows"] = row_agreement(h, exact)
        rows.append(row)
        print(row, flush=True)
    return rows


def _rows_for(
    label: str,
    batch: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
    wanted: list[int],
    rtol: float,
    cap: int,
    exact: torch.Tensor | None = None,
    most: int | None = None,
) -> list[dict[str, Any]]:
    """Solve the wanted reference columns the store lacks (at most ``most`` new ones), then
    compare every setting on all the rows solved so far."""
    model, x, y = batch
    key = fingerprint(model, x, y, rtol, cap)
    store = ReferenceStore(store_path(label.split()[0]), key)
    fm, g = smse_gradients(model, x, y)
    solve_columns(store, fm, x, g, wanted, rtol, cap, chunk=3, most=most)
    solved = sorted(store.columns)
    reference = store.rows(solved)
    meta = {"model": label, "setting": f"reference: cg --cg-start preconditioned rtol={rtol}"}
    row = {**meta, "cap": cap, **reference_summary(store, solved, rtol)}
    if exact is not None:
        row["pearson_vs_exact"], row["spearman_vs_exact"] = row_agreement(reference, exact[solved])
    print(row, flush=True)
    return [row, *_row_settings(label, batch, reference, solved, exact)]


def rows_rows(
    archs: list[str],
    checkpoints: dict[str, str],
    wanted: list[int],
    rtol: float,
    cap: int,
    device: str = "cpu",
    most: int | None = None,
) -> list[dict[str, Any]]:
    """The issue's measure on the rows solved so far: the hardest small model first (sampled
    and whole, against the exact H), then the trained demo models against their references."""
    small = train_small(*MODELS[-1])
    exact = small.reference.full("smse", 1e-4)
    batch = (small.model, small.inputs, small.targets)
    label = f"small P = {small.reference.jac.shape[2]}"
    rows = _rows_for(label, batch, wanted, rtol, cap, exact, most)
    x, y = (t.to(device) for t in euler_batch())
    for arch in archs:
        model, _ = ckpt.load(checkpoints.get(arch, f"workspace/checkpoints/{arch}_demo_s10"))
        model.to(device)  # the same system on any device: its columns share one store
        rows += _rows_for(f"{arch} (trained)", (model, x, y), wanted, rtol, cap, most=most)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part",
        choices=(
            "fidelity",
            "overparam",
            "tolerance",
            "starts",
            "cg",
            "cost",
            "columns",
            "rows",
            "all",
        ),
        default="all",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="ARCH=DIR")
    parser.add_argument("--columns", type=int, default=6, help="cg: columns solved per model")
    parser.add_argument(
        "--column",
        action="append",
        type=int,
        default=[],
        help="cg: solve these columns (0 … N-1) instead of --columns spread over the batch",
    )
    parser.add_argument("--arch", action="append", choices=("unet", "vit"), help="cg: models")
    parser.add_argument("--rtol", action="append", type=float, help="cg: tolerances")
    parser.add_argument("--cap", type=int, help="cg: iteration cap per column")
    parser.add_argument("--device", default="cpu", help="cost, rows: cpu or cuda")
    parser.add_argument(
        "--max-columns", type=int, help="rows: solve at most this many new columns per model"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="fidelity, overparam: these estimators' settings alone, written to "
        "fidelity_<names>.json / fidelity_overparam_<names>.json",
    )
    parser.add_argument(
        "--start",
        action="append",
        choices=("cold", "deflated", "preconditioned"),
        help="cg: starts to run",
    )
    args = parser.parse_args()
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    suffix = "_quick" if args.quick else ""
    if args.part in ("fidelity", "all"):
        write_result(
            "_".join(["fidelity", *args.only]) + suffix,
            "Estimator fidelity vs the exact dense solve (issue 14)"
            + (f": {', '.join(args.only)}" if args.only else ""),
            fidelity_rows(args.quick, tuple(args.only)),
            "Pearson / median row Spearman of standardised Ĥ vs the exact (η + λI)⁻¹ solve; "
            "forwards = 2.2·JVPs + 2·VJPs (batch forwards). Target: ≥ 0.95 / ≥ 0.9.",
        )
    if args.part in ("overparam", "all"):
        write_result(
            "_".join(["fidelity_overparam", *args.only]) + suffix,
            "Estimator fidelity vs the exact dense solve with P > N·D (η singular)"
            + (f": {', '.join(args.only)}" if args.only else ""),
            overparam_rows(args.quick, tuple(args.only)),
            "As fidelity.json, on trained TinyConvs (8², N = 12: 3 classes × steps 0, 4, 8, 12 "
            "of the test trajectory) with more parameters than outputs, P = 1.5–1.9 × N·D, as "
            "on the real surrogates: η = Σ J_nᵀJ_n is singular (rank_eta: eigenvalues above "
            "1e-10·lambda_max). Pearson / median row Spearman of standardised Ĥ vs the exact "
            "float64 (η + λI)⁻¹ solve; residual_correction: the default's share. "
            "Target: ≥ 0.95 / ≥ 0.9.",
        )
    if args.part in ("tolerance", "all"):
        write_result(
            "fidelity_tolerance" + suffix,
            "How exact a solve must be to meet the fidelity target (issue 14)",
            tolerance_rows(args.quick),
            "Agreement (Pearson / median row Spearman of standardised Ĥ) with the exact float64 "
            "solve of a float32 exact solve and of solves whose full-system residual is a random "
            "direction of relative size ρ per column (median of 3 draws). Target: ≥ 0.95 / 0.9. "
            "The paper's rtol is 1.5e-2 (UNet) / 5e-2 (ViT); cg stopped there: fidelity.json.",
        )
    if args.part in ("starts", "all"):
        write_result(
            "cg_start_small" + suffix,
            "cg iterations from each start on the P = 880 small model (issue 14)",
            start_rows(args.quick),
            "λ = 1e-4, N = 48, all columns, cap 5000 per column; iterations summed over the "
            "columns. deflated depth d: continues from the Galerkin solve in span{G, …, "
            "η^(d−1)G} with that space deflated (depth 1: span(G)); preconditioned: from the "
            "EK-FAC-preconditioned Krylov space of depth 4, every iteration preconditioned by "
            "EK-FAC. pearson / spearman: the solution's standardised Ĥ against the exact one.",
        )
    if args.part in ("cost", "all"):
        archs = args.arch or ["unet", "vit"]
        on_gpu = args.device != "cpu"
        write_result(
            "estimator_cost" + ("_cuda" if on_gpu else ""),
            "Estimator seconds side by side on the trained demo models (issue 14)"
            + (", GPU" if on_gpu else ""),
            cost_rows(archs, checkpoints, args.device),
            "N = 48 at 32², one batch, best of two runs after a warm-up that traces the tangent "
            "program; x_ekfac = seconds / ekfac's seconds in the same run. Fidelity of the "
            "same settings on the small dense-reference models: fidelity.json.",
        )
    if args.part == "columns":  # opt-in: ≈ 30 minutes on 2 cores
        archs = args.arch or ["unet", "vit"]
        chosen = args.column or [0, 9, 19, 28, 38, 47]
        rtol = (args.rtol or [1e-3])[0]
        write_result(
            "fidelity_columns" + suffix,
            "Estimator fidelity on the demo models against a near-exact solve of a few "
            "columns (issue 14)",
            columns_rows(archs, checkpoints, chosen, rtol, args.cap or 3000),
            f"λ = 1e-4, N = 48; columns {chosen} of H (perturbations) solved by "
            f"EK-FAC-preconditioned cg to rtol {rtol}; Pearson over the N×K block of H (no "
            "row standardisation: it needs every column) and median per-column Spearman over "
            "the N responses. First the same on the hardest small model, where the exact "
            "dense H checks the reference (pearson_vs_exact).",
        )
    if args.part == "rows":  # opt-in: minutes per column and model on 2 cores
        archs = args.arch or ["unet", "vit"]
        rtol = (args.rtol or [3e-3])[0]
        wanted = args.column or spread_order()
        write_result(
            "fidelity_rows_" + "_".join(archs),
            "The issue's fidelity measure on the demo models, on the rows solved so far (issue 14)",
            rows_rows(
                archs, checkpoints, wanted, rtol, args.cap or 1200, args.device, args.max_columns
            ),
            f"λ = 1e-4, N = 48; reference: EK-FAC-preconditioned cg to rtol {rtol} "
            "(bench/results/reference_columns_*.json, added to run by run). H is symmetric, "
            "so each solved column is a whole row: Pearson of the row-standardised Ĥ over "
            "the solved rows and the median per-row Spearman, the issue's measure on a "
            "sample of rows (all 48: the whole measure). On the small model, the same "
            "sample against the exact H and the whole measure beside it; asymmetry: "
            "‖B − Bᵀ‖/‖B + Bᵀ‖ of the reference's solved block (0 for an exact solve).",
        )
    if args.part in ("cg", "all"):
        archs = args.arch or ["unet", "vit"]
        write_result(
            "cg_start_"
            + "_".join(archs + (args.start or []) + [f"c{c}" for c in args.column])
            + suffix,
            f"cg: cold vs deflated start, {' and '.join(archs)} (issue 14)",
            cg_rows(
                archs,
                args.rtol or ([5e-2] if args.quick else [5e-2, 1.5e-2]),
                args.quick,
                checkpoints,
                args.columns,
                args.cap,
                tuple(args.start or ("cold", "deflated")),
                tuple(args.column),
            ),
            "λ = 1e-4, N = 48 at 32²; "
            + (
                f"columns {args.column}"
                if args.column
                else f"{args.columns} columns spread over the batch"
            )
            + ", each an "
            "independent cg run (iterations equal a full run's). Deflated: the Galerkin "
            "solve in span{G, ηG, η²G, η³G} (depth 4) and that space deflated; its products "
            "include the basis, its residual and AQ, for all N columns. Preconditioned: the "
            "same from the EK-FAC-preconditioned Krylov space, with EK-FAC-preconditioned "
            "iterations. A cold run stopped at its cap is a lower bound. Target: ≥ 10× fewer "
            "iterations.",
        )


if __name__ == "__main__":
    main()
