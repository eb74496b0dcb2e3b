"""Solver throughput (cell-updates per second) and `coherence simulate` wall time.

Targets (issue 2): 3 CE classes × 32 trajectories × 21 snapshots at 64² in ≤ 60 s on 2 cores.
Run: python -m bench.bench_solvers [--skip-128]
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch

from bench.common import write_result
from coherence.simulation import euler, navier_stokes
from coherence.simulation.classes import get_class
from coherence.simulation.dataset import SimulationRequest, generate_dataset


def count_steps(owner, method_name: str):
    """Wrap a solver's private single-step function to count batched steps.

    Cell-updates = steps · B · H · W (Euler trajectories that already reached the output time
    idle through the last steps, so this slightly overstates its work).
    """
    original = getattr(owner, method_name)
    counter = {"steps": 0}

    def counted(*args, **kwargs):
        counter["steps"] += 1
        return original(*args, **kwargs)

    setattr(owner, method_name, counted)
    return counter, lambda: setattr(owner, method_name, original)


def solver_rate(family: str, resolution: int, batch: int = 32, t_end: float = 0.25) -> dict:
    if family == "euler":
        state = get_class("CE-RP").sample(batch, resolution, seed=1).float()
        owner, step_name, evolve = euler, "_step", euler.evolve
    else:
        state = get_class("NS-Sines").sample(batch, resolution, seed=1).float()
        owner, step_name, evolve = navier_stokes._Stepper, "step", navier_stokes.evolve
    times = torch.tensor([0.0, t_end])
    counter, restore = count_steps(owner, step_name)
    try:
        start = time.perf_counter()
        evolve(state, times)
        seconds = time.perf_counter() - start
    finally:
        restore()
    updates = counter["steps"] * batch * resolution * resolution
    return {
        "solver": family,
        "grid": f"{resolution}²",
        "batch": batch,
        "t_end": t_end,
        "steps": counter["steps"],
        "seconds": round(seconds, 2),
        "cell_updates_per_s": updates / seconds,
    }


def simulate_time(resolution: int) -> dict:
    request = SimulationRequest(
        family="euler",
        classes=("CE-RP", "CE-CRP", "CE-RPUI"),
        trajectories=32,
        resolution=resolution,
        snapshots=21,
        t_end=1.0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_dataset(request, tmp)
        seconds = time.perf_counter() - start
    return {
        "command": f"simulate 3 CE classes × 32 traj × 21 snapshots at {resolution}²",
        "seconds": round(seconds, 1),
        "target_s": 60 if resolution == 64 else None,
    }


def main() -> None:
    torch.set_num_threads(2)
    sizes = (64,) if "--skip-128" in sys.argv else (64, 128)
    rates = [solver_rate(f, r) for f in ("euler", "ns") for r in sizes]
    write_result(
        "solvers",
        "Solver throughput (float32, batch 32, CPU)",
        rates,
        "cell-updates/s = time steps × batch × cells / wall seconds.",
    )
    walls = [simulate_time(r) for r in sizes]
    write_result("simulate", "coherence simulate wall time (CE, float32)", walls)
    for row in rates + walls:
        print(row)


if __name__ == "__main__":
    main()
