"""Solver throughput (cell-updates per second) and `coherence simulate` wall time.

Targets (issue 2): 3 CE classes × 32 trajectories × 21 snapshots at 64² in ≤ 60 s on 2 cores.
Run: python -m bench.bench_solvers [--skip-128] [--skip-simulate]
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


def count_cell_updates(owner, method_name: str, cells_of):
    """Wrap a solver's private single-step function and add up the cells each call updates.

    ``cells_of(args)`` gives the cells one call advances (the Euler solver steps cache-sized
    blocks of trajectories, so each call's own batch is counted, not the whole batch).
    Trajectories that already reached the output time idle through their block's last steps,
    so Euler's figure slightly overstates useful work.
    """
    original = getattr(owner, method_name)
    counter = {"steps": 0, "cells": 0}

    def counted(*args, **kwargs):
        counter["steps"] += 1
        counter["cells"] += cells_of(args)
        return original(*args, **kwargs)

    setattr(owner, method_name, counted)
    return counter, lambda: setattr(owner, method_name, original)


def solver_rate(family: str, resolution: int, batch: int = 32, t_end: float = 0.25) -> dict:
    if family == "euler":
        state = get_class("CE-RP").sample(batch, resolution, seed=1).float()
        owner, step_name, evolve = euler, "_step", euler.evolve

        def cells_of(args):  # _step(u [4, b, H, W], ...): channel-first blocks
            return args[0].shape[1] * args[0].shape[-2] * args[0].shape[-1]

    else:
        state = get_class("NS-Sines").sample(batch, resolution, seed=1).float()
        owner, step_name, evolve = navier_stokes._Stepper, "step", navier_stokes.evolve

        def cells_of(args):  # the whole batch advances together
            return batch * resolution * resolution

    times = torch.tensor([0.0, t_end])
    counter, restore = count_cell_updates(owner, step_name, cells_of)
    try:
        start = time.perf_counter()
        evolve(state, times)
        seconds = time.perf_counter() - start
    finally:
        restore()
    updates = counter["cells"]
    return {
        "solver": family,
        "grid": f"{resolution}²",
        "batch": batch,
        "t_end": t_end,
        "step_calls": counter["steps"],
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
        "cell-updates/s = Σ over step calls of (trajectories stepped × cells) / wall seconds.",
    )
    walls = [] if "--skip-simulate" in sys.argv else [simulate_time(r) for r in sizes]
    if walls:
        write_result("simulate", "coherence simulate wall time (CE, float32)", walls)
    for row in rates + walls:
        print(row)


if __name__ == "__main__":
    main()
