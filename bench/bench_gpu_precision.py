"""float32 on a GPU: IEEE (the analysis default, coherence.analysis.precision) against TF32
in convolutions (PyTorch's default) and in convolutions and matrix products, each against the
same analysis in float64 on the GPU, and the time each takes.

Models: the trained demo UNet and ViT (workspace/checkpoints/{arch}_demo_s10, N = 48 at 32²,
a real Euler batch) and the paper presets at 128² (initial weights, N = 48: 3 classes × 16
steps of drifting synthetic Euler states; the cost of a unit does not depend on the weights).
Estimator: the default (ekfac-krylov, depth 1), SMSE. Per row: seconds (best of two after a
warm-up; float64 once), the relative Frobenius error of H against float64, the Pearson
correlation of the standardised Ĥ with float64's, and the worst full-system residual.
Run on a GPU: python -m bench.bench_gpu_precision [--skip-paper] [--device cpu]
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np
import torch

from bench.bench_influence import euler_batch
from bench.common import drifting_euler_states, write_result
from coherence.analysis.influence import compute_influence
from coherence.analysis.precision import ENV
from coherence.analysis.standardization import standardize
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates.registry import build_model, parameter_count

DEVICE = torch.device("cuda")  # --device cpu: a smoke run of this script without a GPU


def paper_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes × 16 transitions at 128², time-major as an analysis batch."""
    states = torch.from_numpy(drifting_euler_states(3, 17, 128, seed=0))  # (C, T+1, F, H, W)
    stacked = states.transpose(0, 1)
    return stacked[:-1].reshape(-1, 4, 128, 128), stacked[1:].reshape(-1, 4, 128, 128)


def paper_model(arch: str, x: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, "paper", channels=4, resolution=128)
    stats = x.transpose(0, 1).reshape(4, -1)
    model.set_normalization(stats.mean(1), stats.std(1))
    return model


def timed(model, x, y, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        clock = time.perf_counter()
        result = compute_influence(model, x, y)
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - clock)
    return best, result


def rows_for(label: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list:
    rows: list[dict[str, Any]] = []
    model64 = model.to(DEVICE, torch.float64)
    seconds, ref = timed(model64, x.to(DEVICE, torch.float64), y.to(DEVICE, torch.float64), 1)
    h64 = ref.H.double().cpu()
    std64 = standardize(h64).flatten().numpy()
    rows.append(_row(label, model, "float64", seconds, ref, h64, std64))
    print(rows[-1], flush=True)
    model32 = model.to(DEVICE, torch.float32)
    x32, y32 = x.to(DEVICE, torch.float32), y.to(DEVICE, torch.float32)
    # IEEE (the analysis default); TF32 in convolutions (PyTorch's default, what
    # COHERENCE_TF32=1 keeps); TF32 in matrix products too (torch.backends.cuda.matmul)
    for precision, conv, matmul in (
        ("ieee", False, False),
        ("tf32 conv", True, False),
        ("tf32 conv+matmul", True, True),
    ):
        os.environ[ENV] = "0" if precision == "ieee" else "1"
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul
        compute_influence(model32, x32, y32)  # warm-up: traces the tangent program
        seconds, result = timed(model32, x32, y32, 2)
        rows.append(_row(label, model, f"float32 {precision}", seconds, result, h64, std64))
        print(rows[-1], flush=True)
    os.environ.pop(ENV, None)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
    return rows


def _row(label, model, precision, seconds, result, h64, std64) -> dict[str, Any]:
    h = result.H.double().cpu()
    std = standardize(h).flatten().numpy()
    residuals = result.diagnostics.residuals or (float("nan"),)
    return {
        "model": label,
        "parameters": parameter_count(model),
        "precision": precision,
        "seconds": seconds,
        "rel_err_H": float(torch.linalg.norm(h - h64) / torch.linalg.norm(h64)),
        "pearson_std": float(np.corrcoef(std, std64)[0, 1]),
        "residual_max": float(max(residuals)),
    }


def main() -> None:
    global DEVICE
    if "--device" in sys.argv:
        DEVICE = torch.device(sys.argv[sys.argv.index("--device") + 1])
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu_precision needs a CUDA GPU (or --device cpu for a smoke run)")
    cases = [("unet", "demo"), ("vit", "demo")]
    if "--skip-paper" not in sys.argv:
        cases += [("unet", "paper"), ("vit", "paper")]
    rows: list[dict[str, Any]] = []
    for arch, preset in cases:  # written after each model: a run stopped early keeps its rows
        if preset == "demo":
            x, y = euler_batch()
            model, _ = ckpt.load(f"workspace/checkpoints/{arch}_demo_s10")
            rows += rows_for(f"{arch} demo (trained), 32²", model, x, y)
        else:
            x, y = paper_batch()
            rows += rows_for(f"{arch} paper (initial), 128²", paper_model(arch, x), x, y)
        if DEVICE.type == "cuda":
            write_result(
                "gpu_precision",
                "float32 on the GPU: IEEE (default) vs TF32, each against float64",
                rows,
                "ekfac-krylov depth 1 (the default), SMSE, N = 48. rel_err_H: ‖H − H₆₄‖/‖H₆₄‖; "
                "pearson_std: Pearson of the standardised Ĥ with float64's. IEEE is what an "
                "analysis runs (coherence.analysis.precision); TF32 conv is PyTorch's default "
                "(cuDNN convolutions), kept with COHERENCE_TF32=1; conv+matmul adds "
                "torch.backends.cuda.matmul.allow_tf32.",
            )


if __name__ == "__main__":
    main()
