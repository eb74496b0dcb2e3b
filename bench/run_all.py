"""Run every benchmark in turn (``make bench``), each in its own process, then rewrite
bench/RESULTS.md from bench/results/*.json.

Each runs with its default options (the quick set); the slow extras are opt-in on the
module itself: ``bench_training --demo`` (``coherence demo`` from scratch), ``bench_influence
--cg-demo vit`` (≈ 20 minutes). The container figures (bench/results/docker.json) come from
scripts/docker-test.sh. Benchmark on a quiet machine: the figures are wall-clock times.
GPU_BENCHMARKS run only where a CUDA GPU is visible; bench/gpu_check.sh runs them with the GPU
options of the others (``--device cuda``, ``--cuda``) and the CUDA tests. PEER_BENCHMARKS
compare with other libraries, which are no dependency: ``make bench-peers`` installs them
beside the project and runs these.
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.common import render_report

BENCHMARKS = (
    "bench_solvers",
    "bench_training",
    "bench_influence",
    "bench_cache",
    "bench_dashboard",
    "bench_paper_unit",
    "bench_dashboard_concurrency",
    "bench_concurrency",
    "bench_foreign_load",
    "bench_import",
    "bench_fidelity",
    "bench_twolevel",
    "bench_sweeps",
    "bench_ray",
)
GPU_BENCHMARKS = ("bench_gpu_precision",)
# against libraries that are no dependency (installed into .peers/): `make bench-peers`
PEER_BENCHMARKS = ("bench_kronfluence",)


def main() -> None:
    import torch

    gpu = GPU_BENCHMARKS if torch.cuda.is_available() else ()
    for name in BENCHMARKS + gpu:
        started = time.perf_counter()
        print(f"== bench.{name}", flush=True)
        subprocess.run([sys.executable, "-m", f"bench.{name}"], check=True)
        print(f"== bench.{name}: {time.perf_counter() - started:.0f} s", flush=True)
    render_report()


if __name__ == "__main__":
    main()
