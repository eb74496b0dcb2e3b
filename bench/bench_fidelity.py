"""Fidelity and cost of the estimators against the paper's full solve (issue 14).

1. ``fidelity``: small trained models where the exact dense (η + λI)⁻¹ solve is computable
   (TinyConv on compressible Euler at 8², N = 48, P = 0.9k–1.8k; tests/analysis/fixtures.py),
   λ = 1e-4 and 1e-2. Per setting (euclidean, subspace, krylov depth 2/4/6/8): Pearson of the
   standardised Ĥ with the exact one over all entries, median per-row Spearman, the median
   and largest full-system residual, batch JVPs and VJPs and their forward-pass equivalents
   (JVP ≈ 2.2, VJP ≈ 2 batch forwards), seconds. Target (issue 14): Pearson ≥ 0.95,
   Spearman ≥ 0.9.
2. ``cg``: cold vs deflated-start cg on the demo UNet and ViT (N = 48, 32², untrained demo
   presets unless --checkpoint names trained ones) at rtol 5e-2 and 1.5e-2: iterations (max
   and sum over columns), products, seconds, converged. Target: ≥ 10× fewer iterations.

Run: python -m bench.bench_fidelity [--part fidelity|cg|all] [--quick]
(--quick: one small model, depths 2 and 4, cg on the UNet at rtol 5e-2 with max_iter 50).
Figures from a shared or single-threaded machine are indicative only.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from bench.bench_influence import demo_model, euler_batch
from bench.common import write_result
from coherence.analysis.influence import compute_influence
from coherence.analysis.standardization import standardize
from coherence.surrogates import checkpoint as ckpt
from tests.analysis.fixtures import train_small

JVP_FORWARDS, VJP_FORWARDS = 2.2, 2.0
MODELS = ((12, 2), (16, 0), (24, 1), (24, 0))  # (hidden, seed): P = 880, 1172, 1756, 1756


def _products(diag: Any) -> dict[str, Any]:
    jvps, vjps = diag.batch_jvps or 0, diag.batch_vjps or 0
    return {
        "jvps": jvps,
        "vjps": vjps,
        "forwards": JVP_FORWARDS * jvps + VJP_FORWARDS * vjps,
        "seconds": diag.seconds,
    }


def fidelity_rows(quick: bool) -> list[dict[str, Any]]:
    settings = [("euclidean", {}), ("subspace", {})]
    settings += [("krylov", {"depth": d}) for d in ((2, 4) if quick else (2, 4, 6, 8))]
    rows = []
    for hidden, seed in MODELS[:1] if quick else MODELS:
        small = train_small(hidden, seed)
        p = small.reference.jac.shape[2]
        for damping in (1e-4, 1e-2):
            exact = standardize(small.reference.full("smse", damping))
            for estimator, options in settings:
                result = compute_influence(
                    small.model,
                    small.inputs,
                    small.targets,
                    estimator=estimator,
                    damping=damping,
                    **options,
                )
                h = standardize(result.H)
                res = result.diagnostics.residuals or [float("nan")]
                rows.append(
                    {
                        "P": p,
                        "seed": seed,
                        "lambda": damping,
                        "setting": estimator + "".join(f" {k}={v}" for k, v in options.items()),
                        "pearson": float(np.corrcoef(h.flatten(), exact.flatten())[0, 1]),
                        "spearman": float(
                            np.median([spearmanr(h[i], exact[i])[0] for i in range(len(h))])
                        ),
                        "residual_median": float(np.median(res)),
                        "residual_max": float(np.max(res)),
                        **_products(result.diagnostics),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def cg_rows(quick: bool, checkpoints: dict[str, str]) -> list[dict[str, Any]]:
    x, y = euler_batch()
    rows = []
    for arch in ("unet",) if quick else ("unet", "vit"):
        if arch in checkpoints:
            model, _ = ckpt.load(checkpoints[arch])
        else:
            model = demo_model(arch, 10, x)
        for rtol in (5e-2,) if quick else (5e-2, 1.5e-2):
            for start in ("cold", "deflated"):
                diag = compute_influence(
                    model,
                    x,
                    y,
                    estimator="cg",
                    rtol=rtol,
                    cg_start=start,
                    max_iter=50 if quick else 500,
                ).diagnostics
                rows.append(
                    {
                        "model": arch + (" (trained)" if arch in checkpoints else " (untrained)"),
                        "rtol": rtol,
                        "start": start,
                        "iters_max": max(diag.iterations),
                        "iters_sum": sum(diag.iterations),
                        "converged": diag.converged,
                        "residual_max": max(diag.residuals),
                        **_products(diag),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("fidelity", "cg", "all"), default="all")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="ARCH=DIR")
    args = parser.parse_args()
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    suffix = "_quick" if args.quick else ""
    if args.part in ("fidelity", "all"):
        write_result(
            "fidelity" + suffix,
            "Estimator fidelity vs the exact dense solve (issue 14)",
            fidelity_rows(args.quick),
            "Pearson / median row Spearman of standardised Ĥ vs the exact (η + λI)⁻¹ solve; "
            "forwards = 2.2·JVPs + 2·VJPs (batch forwards). Target: ≥ 0.95 / ≥ 0.9.",
        )
    if args.part in ("cg", "all"):
        write_result(
            "cg_start" + suffix,
            "cg: cold vs deflated start (issue 14)",
            cg_rows(args.quick, checkpoints),
            "iterations per column to rtol; the deflated start's products include the "
            "subspace solve, its residual and AQ. Target: ≥ 10× fewer iterations.",
        )


if __name__ == "__main__":
    main()
