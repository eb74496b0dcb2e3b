"""Generate a dataset from the solvers: every class simulated in chunks (in worker processes
when large enough), shuffled by its class seed, split and written as Well files, all staged and
committed together (``staging``). ``dataset`` re-exports ``generate_dataset`` and
``simulate_chunk``, the names callers import.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from coherence.cache.slots import machine_cores
from coherence.errors import RequestError
from coherence.simulation.dataset import (
    SPLITS,
    Progress,
    SimulationRequest,
    class_seed,
    split_counts,
)
from coherence.simulation.families import FAMILIES, Family
from coherence.simulation.importers.common import DISK_MARGIN, room_needed, target_dataset_name
from coherence.simulation.staging import Stage, dataset_transaction
from coherence.simulation.wellformat import write_well_file


def evolve_states(family: Family, states: torch.Tensor, times: np.ndarray) -> torch.Tensor:
    """Run the family's solver: [B, F, H, W] -> [B, T, F, H, W]."""
    times_t = torch.as_tensor(times, dtype=states.dtype)
    if family is Family.EULER:
        from coherence.simulation import euler

        return euler.evolve(states, times_t, gamma=FAMILIES[family].scalars["gamma"])
    from coherence.simulation import navier_stokes

    return navier_stokes.evolve(states, times_t, nu=FAMILIES[family].scalars["nu"])


PARALLEL_MIN_CELLS = 16 * 64 * 64  # per class: below this, worker start-up costs more


def simulate_chunk(
    family: str,
    class_name: str,
    n: int,
    resolution: int,
    seed: int,
    start: int,
    stop: int,
    times: np.ndarray,
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Trajectories start..stop of one class (initial states drawn for all n, then sliced, so
    a chunk does not change what any trajectory is). One torch thread: chunks run side by side.
    """
    from coherence.simulation.classes import get_class

    initial = get_class(class_name).sample(n, resolution, seed)[start:stop].to(dtype)
    return evolve_states(Family(family), initial, times).cpu().numpy()


def _simulate_chunk_in_worker(*args) -> np.ndarray:
    torch.set_num_threads(1)
    return simulate_chunk(*args)


ORPHAN_POLL_SECONDS = 1.0


def _exit_with_parent(parent: int) -> None:
    """A pool worker's initializer: exit once its parent is gone. Why: a `coherence
    simulate` killed with SIGKILL left its spawned workers (≈ 300 MB each) computing their
    chunks, then waiting for work forever, reparented to init."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def generate_dataset(
    request: SimulationRequest,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    max_workers: int | None = None,
) -> Path:
    """Simulate every class and write the Well layout under ``out_dir``; returns out_dir.

    Each class gets its own seed (``class_seed``) for initial states and split, so results are
    reproducible class by class. Chunks of ``batch_size`` trajectories run in ``workers``
    processes (default: one per core, at most ``max_workers``, when the job is big enough to
    pay for their start-up; 1 runs in this process). Existing class files are refused unless
    ``overwrite``. All files are staged and committed together
    (``coherence.simulation.staging``): a killed run leaves no dataset, or the previous one
    untouched, never a partial one.
    """
    out = Path(out_dir)
    family = Family(request.family)
    counts = split_counts(request.trajectories, request.split)
    check_simulation_room(request, family, out)
    with dataset_transaction(out) as stage:
        # classes added to a dataset share its grid and time axis, and its name (a
        # walk-through added a 32² class to a 16² dataset, which then opened nowhere); an
        # existing class is replaced only with --overwrite; a new dataset is named after its
        # folder unless --name says otherwise, and no other dataset beside it may hold that
        # name (checkpoints record it): the import's one check
        name = target_dataset_name(
            stage,
            family=family,
            nx=request.resolution,
            ny=request.resolution,
            times=np.asarray(request.times, dtype=np.float64),
            files=[(split, f"{c}.hdf5") for split in SPLITS for c in request.classes],
            overwrite=overwrite,
            name=request.dataset_name,
            command="simulate",
        )
        request = replace(request, dataset_name=name)
        pool = (workers, max_workers)
        _simulate_into(stage, request, family, counts, batch_size, dtype, progress, pool)
    return out


def check_simulation_room(request: SimulationRequest, family: Family, out: Path) -> None:
    """Refuse, before any step, a dataset the disk under ``out`` cannot hold: each limit
    passed on its own, and 100 000 trajectories at 1024² (≈ 100 TB) simulated until memory
    ran out. Per trajectory: every snapshot of the Well fields, float32 (Euler stores
    density, energy, pressure and 2 momentum components; Navier–Stokes 2 velocity ones)."""
    from coherence.resources import UNKNOWN, free_disk, size_text

    fields = 5 if family is Family.EULER else 2
    per = len(request.times) * fields * request.resolution**2 * 4
    n = request.trajectories * len(request.classes)
    needed, free = room_needed(n * per), free_disk(out)
    if free == UNKNOWN or needed <= free:
        return
    each = len(request.classes) * per  # one more trajectory of every class
    fits = max(0, (free - DISK_MARGIN) * 100 // (101 * each))
    while fits > 0 and room_needed(fits * each) > free:  # the estimate, made exact
        fits -= 1
    while room_needed((fits + 1) * each) <= free:
        fits += 1
    fix = (
        f"simulate fewer trajectories (--trajectories {fits} fits) or a coarser --resolution"
        if fits >= 1
        else "simulate a coarser --resolution or fewer --snapshots"
    )
    raise RequestError(
        f"--out {out}: this dataset needs ≈ {size_text(needed)} ({n} trajectories × "
        f"{size_text(per)}), and the disk there has {size_text(free)} free; {fix}, or "
        "write to a larger disk"
    )


def _simulate_into(
    stage: Stage,
    request: SimulationRequest,
    family: Family,
    counts: tuple[int, int, int],
    batch_size: int,
    dtype: torch.dtype,
    progress: Progress | None,
    pool: tuple[int | None, int | None],
) -> None:
    """Simulate every class in chunks and write its split files into the stage."""
    jobs = _chunk_jobs(request, family, batch_size, dtype)
    results = _run_jobs(jobs, request, pool, progress)
    total = len(request.classes) * request.trajectories
    for class_name in request.classes:
        if progress:  # the count is of all classes, the class is the one being written
            progress(total, total, f"writing {class_name} ({request.trajectories} trajectories)")
        _write_class(stage, request, family, counts, class_name, jobs, results)


def _chunk_jobs(
    request: SimulationRequest, family: Family, batch_size: int, dtype: torch.dtype
) -> list[tuple]:
    """``simulate_chunk`` arguments of each chunk of ``batch_size`` trajectories, class by class."""
    return [
        (
            family.value,
            c,
            request.trajectories,
            request.resolution,
            class_seed(request.seed, c),
            start,
            min(start + batch_size, request.trajectories),
            request.times,
            dtype,
        )
        for c in request.classes
        for start in range(0, request.trajectories, batch_size)
    ]


def _pool_size(
    jobs: list[tuple], request: SimulationRequest, pool: tuple[int | None, int | None]
) -> int:
    """The processes to run ``jobs`` in: ``workers`` when given, else one per core, at most
    ``max_workers``, for a job big enough to pay for their start-up, and 1 otherwise."""
    workers, cap = pool
    if workers is not None:
        return workers
    big = request.trajectories * request.resolution**2 >= PARALLEL_MIN_CELLS
    return min(machine_cores(), cap or machine_cores(), len(jobs)) if big else 1


def _run_jobs(
    jobs: list[tuple],
    request: SimulationRequest,
    pool: tuple[int | None, int | None],
    progress: Progress | None,
) -> dict[tuple[str, int], np.ndarray]:
    """States of every chunk, keyed (class, first trajectory): in this process, or in
    ``workers`` spawned processes of ``pool = (workers, max_workers)`` (default: one per
    core, at most max_workers, when the job is big enough)."""
    workers = _pool_size(jobs, request, pool)
    total = len(request.classes) * request.trajectories
    done = 0
    results: dict[tuple[str, int], np.ndarray] = {}

    def record(job: tuple, states: np.ndarray) -> None:
        nonlocal done
        results[(job[1], job[5])] = states
        done += job[6] - job[5]
        if progress:
            progress(done, total, f"simulated {done}/{total} trajectories (last: {job[1]})")

    if workers <= 1:
        for job in jobs:
            record(job, simulate_chunk(*job))
    else:
        context = multiprocessing.get_context("spawn")  # fork after torch init is unsafe
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        )
        try:
            futures = {pool.submit(_simulate_chunk_in_worker, *job): job for job in jobs}
            for future in as_completed(futures):
                record(futures[future], future.result())
        except BaseException:
            _stop_now(pool)
            raise
        pool.shutdown()
    return results


def _stop_now(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now. Why: leaving the pool waited
    for the chunks being computed, ≈ 30 s after a Ctrl-C at 64² (a walk-through). The
    workers only compute and return arrays, so ending them loses nothing; the pool's
    process table is private, hence the guard."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # shutdown drops it
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    # let the pool's manager thread see the ended workers and close its wake-up pipe before
    # the interpreter exits: at exit, concurrent.futures writes to that pipe, and a close
    # racing the write printed "OSError: Bad file descriptor" with a traceback (a CI run)
    for process in processes:
        process.join(timeout=5)
    if manager is not None:
        manager.join(timeout=10)


def _write_class(
    stage: Stage,
    request: SimulationRequest,
    family: Family,
    counts: tuple[int, int, int],
    class_name: str,
    jobs: list[tuple],
    results: dict[tuple[str, int], np.ndarray],
) -> None:
    """One class's trajectories, shuffled by its seed, written as one file per split."""
    seed = class_seed(request.seed, class_name)
    states = np.concatenate([results[(class_name, job[5])] for job in jobs if job[1] == class_name])
    order = np.random.default_rng(seed).permutation(request.trajectories)
    bounds = np.cumsum((0, *counts))
    for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:], strict=True):
        write_well_file(
            stage.path(split, f"{class_name}.hdf5"),
            states[np.sort(order[lo:hi])],
            request.times,
            family=family,
            class_name=class_name,
            dataset_name=request.name,
        )
