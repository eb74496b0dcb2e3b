"""Training throughput (samples/s, one AdamW step on SMSE) per architecture and preset, and
the demo workspace build time.

Run: python -m bench.bench_training [--demo] [--cuda]   (--demo also times `coherence demo` from
scratch; --cuda measures on the GPU instead, TF32 as PyTorch's default leaves it)
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch

from bench.common import best_of, write_result
from coherence.surrogates.losses import smse
from coherence.surrogates.registry import build_model, parameter_count

CASES = (
    ("unet", "demo", 32, 32),
    ("vit", "demo", 32, 32),
    ("unet", "paper", 128, 8),
    ("vit", "paper", 128, 8),
)


def throughput(arch: str, preset: str, resolution: int, batch: int, device: str = "cpu") -> dict:
    torch.manual_seed(0)
    model = build_model(arch, preset, channels=4, resolution=resolution).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    x = torch.randn(batch, 4, resolution, resolution, device=device)
    y = torch.randn(batch, 4, resolution, resolution, device=device)

    def step() -> None:
        loss = smse(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device != "cpu":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: allocator, oneDNN primitives, autograd graph caches
        step()
    seconds = best_of(step, repeats=5)
    return {
        "arch": arch,
        "preset": preset,
        "grid": f"{resolution}²",
        "parameters": parameter_count(model),
        "batch": batch,
        "samples_per_s": batch / seconds,
    }


def demo_build_time() -> dict:
    from coherence.demo import build_demo

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_demo(tmp, log=lambda message: print(message, flush=True))
        return {
            "command": "coherence demo (fresh workspace)",
            "seconds": round(time.perf_counter() - start, 1),
            "target_s": 600,
        }


def main() -> None:
    if "--cuda" in sys.argv:  # the GPU figures, with the paper's batch of 32 added
        cases = [*CASES, ("unet", "paper", 128, 32), ("vit", "paper", 128, 32)]
        rows = [throughput(*case, device="cuda") for case in cases]
        write_result(
            "training_cuda", "Training throughput (float32, GPU, AdamW step on SMSE)", rows
        )
        print(*rows, sep="\n")
        return
    torch.set_num_threads(2)
    rows = [throughput(*case) for case in CASES]
    write_result("training", "Training throughput (float32, CPU, AdamW step on SMSE)", rows)
    for row in rows:
        print(row)
    if "--demo" in sys.argv:
        row = demo_build_time()
        write_result("demo", "Demo workspace build time", [row])
        print(row)


if __name__ == "__main__":
    main()
