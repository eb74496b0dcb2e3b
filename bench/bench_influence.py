"""Influence engine speed and accuracy (issue 4).

1. Seconds per (checkpoint, batch) for N = 48 (3 classes × 16 steps) at 32² on the demo
   presets, per estimator, beside the floor measured in the same run: N per-example VJPs
   (timed as-is) + s × two forward passes of the batch (forward mode costs about two
   forwards). Target: subspace within 1.5× the floor.
2. Subspace vs cg at the paper's rtol 1.5e-2 on a model small enough to form the dense
   float64 reference: seconds and relative error of H. Target: subspace ≥ 10× faster.

Run: python -m bench.bench_influence [--cg-demo]   (--cg-demo also runs cg on the demo
presets, which takes many minutes on 2 CPU cores)
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from bench.common import best_of, write_result
from coherence.analysis.autodiff import FlatModel, per_example_vjps
from coherence.analysis.influence import compute_influence
from coherence.analysis.observables import Response, residual
from coherence.simulation.classes import get_class
from coherence.simulation.euler import evolve
from coherence.surrogates.registry import build_model, parameter_count

N_CLASSES, N_STEPS, RES = 3, 16, 32


def euler_batch(resolution: int = RES, steps: int = N_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """A real analysis batch: one trajectory of each CE class, time-major order."""
    per_class = []
    for c, name in enumerate(("CE-RP", "CE-CRP", "CE-RPUI")[:N_CLASSES]):
        initial = get_class(name).sample(1, resolution, seed=c).float()
        times = torch.linspace(0, steps * 0.05, steps + 1)
        per_class.append(evolve(initial, times)[0])  # (T+1, F, H, W)
    stacked = torch.stack(per_class, dim=1)  # (T+1, C, F, H, W)
    return stacked[:-1].reshape(-1, 4, resolution, resolution), stacked[1:].reshape(
        -1, 4, resolution, resolution
    )


def floor_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rank: int) -> dict:
    """N per-example VJPs + rank × 2 batch forwards, each the best of three runs."""
    model.eval()
    fm = FlatModel(model)
    with torch.no_grad():
        prediction = fm(fm.theta, x)
    cotangent = residual(Response.SMSE, prediction, x, y)
    forward = best_of(lambda: fm(fm.theta, x), repeats=3)
    vjps = best_of(lambda: per_example_vjps(fm, x, [cotangent]), repeats=3)
    return {"forward_s": forward, "vjps_s": vjps, "floor_s": vjps + rank * 2 * forward}


def demo_rows(with_cg: bool) -> list[dict]:
    x, y = euler_batch()
    rows = []
    for arch in ("unet", "vit"):
        torch.manual_seed(0)
        model = build_model(arch, "demo", channels=4, resolution=RES)
        model.set_normalization(
            x.transpose(0, 1).reshape(4, -1).mean(1), x.transpose(0, 1).reshape(4, -1).std(1)
        )
        compute_influence(model, x[:4], y[:4], estimator="euclidean")  # warm-up (vmap setup)
        runs = {}
        for estimator, rtol in (("euclidean", None), ("subspace", None)) + (
            (("cg", 1.5e-2),) if with_cg else ()
        ):
            start = time.perf_counter()
            result = compute_influence(model, x, y, estimator=estimator, rtol=rtol)
            runs[estimator] = (time.perf_counter() - start, result.diagnostics)
        rank = runs["subspace"][1].rank
        floor = floor_seconds(model, x, y, rank)
        for estimator, (seconds, diag) in runs.items():
            rows.append(
                {
                    "model": f"{arch} demo ({parameter_count(model):,} params)",
                    "estimator": estimator + (" rtol 1.5e-2" if estimator == "cg" else ""),
                    "N": x.shape[0],
                    "seconds": seconds,
                    "floor_s": floor["floor_s"],
                    "x_floor": seconds / floor["floor_s"],
                    "rank_or_iters": diag.rank
                    if estimator == "subspace"
                    else (max(diag.iterations) if diag.iterations else ""),
                }
            )
    return rows


class SmallNet(nn.Module):
    """Circular conv net small enough for a dense Jacobian: P ≈ 1.2k at 8², F = 4."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1, padding_mode="circular")
        self.b = nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular")
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        act = nn.functional.silu
        return x + self.c(act(self.b(act(self.a(x)))))


def dense_rows() -> list[dict]:
    """Subspace and cg (rtol 1.5e-2) against the dense float64 references."""
    from tests.analysis.conftest import dense_reference

    x, y = euler_batch(resolution=8)
    x, y = x.double(), y.double()
    torch.manual_seed(0)
    model = SmallNet().double()
    ref = dense_reference(model, x, y)
    damping = 1e-4
    references = {
        "subspace": ref.galerkin("smse", damping, 1 - 1e-4),
        "cg": ref.full("smse", damping),
    }
    rows = []
    for estimator, rtol in (("subspace", None), ("cg", 1.5e-2)):
        start = time.perf_counter()
        result = compute_influence(
            model, x, y, estimator=estimator, rtol=rtol, damping=damping, max_iter=2000
        )
        seconds = time.perf_counter() - start
        expected = references[estimator]
        error = float((result.H - expected).norm() / expected.norm())
        rows.append(
            {
                "model": f"small conv ({parameter_count(model):,} params, 8², N = {x.shape[0]})",
                "estimator": estimator + (" rtol 1.5e-2" if rtol else ""),
                "seconds": seconds,
                "rel_error_vs_dense": error,
                "reference": "Galerkin in span(G)" if estimator == "subspace" else "(η+λI)⁻¹",
                "rank_or_iters": result.diagnostics.rank
                if estimator == "subspace"
                else max(result.diagnostics.iterations),
            }
        )
    rows.append(
        {
            "model": rows[0]["model"],
            "estimator": "cg / subspace time",
            "seconds": rows[1]["seconds"] / rows[0]["seconds"],
        }
    )
    return rows


def main() -> None:
    torch.set_num_threads(2)
    demo = demo_rows(with_cg="--cg-demo" in sys.argv)
    write_result(
        "influence",
        "Influence per (checkpoint, batch), N = 48 at 32², demo presets",
        demo,
        "floor = N per-example VJPs + s × 2 batch forwards, measured in the same "
        "run; x_floor = seconds / floor (target ≤ 1.5 for subspace).",
    )
    dense = dense_rows()
    write_result(
        "influence_dense",
        "Subspace vs cg at rtol 1.5e-2 against dense float64",
        dense,
        "Target: subspace ≥ 10× faster than cg at rtol 1.5e-2.",
    )
    for row in demo + dense:
        print(row)


if __name__ == "__main__":
    main()
