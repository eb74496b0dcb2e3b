"""Helpers that tests import (conftest.py files hold only fixtures and hooks).

Tiny real inputs (an advected-Euler Well dataset, a 2-epoch UNet, the cheapest analysis
request, synthetic results of a real result's shapes), small solver datasets for workspaces,
and process plumbing (free ports, polling, torch thread counts). The dense influence reference
of the analysis tests lives in tests/analysis/fixtures.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from coherence.analysis.pipeline import AnalysisResult
from coherence.analysis.request import AnalysisRequest
from coherence.simulation.dataset import SimulationRequest, generate_dataset
from coherence.surrogates.training import TrainingArgs, train

if TYPE_CHECKING:
    from coherence.cache.jobs import JobRunner

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"

# ------------------------------------------------------------------ processes and threads ---

WORKER_TIMEOUT = 180  # seconds; a worker imports torch first, slow on a loaded machine


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    predicate: Callable[[], T], what: str, timeout: float = WORKER_TIMEOUT, interval: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Torch on ``threads`` threads inside the block (restored after): bit-for-bit comparisons
    need the same reduction order on both sides, and tiny models gain nothing from threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def computing(runner: JobRunner, key: str):
    """The progress record once the worker is inside run_analysis (a batch stage)."""
    record = runner.store.get_progress(key)
    return record if record and record.pid and "batch" in record.stage else None


def finished(runner: JobRunner, key: str):
    """The job's status once it is no longer queued or running."""
    status = runner.status(key)
    return status if not status.active else None


# ------------------------------------------------- the tiny dataset, checkpoint, requests ---

TINY_CLASSES = ("CE-RP", "CE-CRP")  # the classes of the tiny_dataset fixture
TINY_OVERRIDES = {"base_width": 8, "channel_mult": (1, 2), "n_down": 1, "groups": 4}


def tiny_args(**changes) -> TrainingArgs:
    """A tiny UNet trained for 2 epochs on 4 transitions (≈ 1 s on the tiny dataset)."""
    base = dict(
        arch="unet",
        seed=3,
        epochs=2,
        batch_size=8,
        lr=3e-3,
        transitions=4,
        device="cpu",
        overrides=TINY_OVERRIDES,
    )
    return TrainingArgs(**{**base, **changes})


def link_into_a_folder_refusing_locks(tmp_path: Path, monkeypatch, name: str) -> tuple[Path, Path]:
    """``tmp_path/home/link`` → ``tmp_path/shared/<name>`` (a folder made here), where
    every KeyLock taken in ``shared`` itself fails with EACCES, as in a read-only share:
    (link, shared)."""
    import errno

    from coherence.cache.locks import KeyLock

    shared = tmp_path / "shared"
    (shared / name).mkdir(parents=True)
    link = tmp_path / "home" / "link"
    link.parent.mkdir()
    link.symlink_to(shared / name)
    acquire = KeyLock.acquire

    def read_only_shared(self, **options):
        if self.path.parent == shared:
            raise PermissionError(errno.EACCES, "Permission denied", str(self.path))
        return acquire(self, **options)

    monkeypatch.setattr(KeyLock, "acquire", read_only_shared)
    return link, shared


def advected_states(n: int, steps: int, size: int, seed: int) -> np.ndarray:
    """Smooth positive Euler states translated one cell per snapshot (a learnable map)."""
    rng = np.random.default_rng(seed)
    x = np.arange(size) / size
    xx, yy = np.meshgrid(x, x)
    out = np.empty((n, steps, 4, size, size), dtype=np.float32)
    for b in range(n):
        k = rng.integers(1, 3, size=2)
        phase = rng.uniform(0, 2 * np.pi, size=4)
        rho = 1.0 + 0.3 * np.sin(2 * np.pi * (k[0] * xx + k[1] * yy) + phase[0])
        u = 0.5 + 0.2 * np.cos(2 * np.pi * k[1] * yy + phase[1])
        v = 0.2 * np.sin(2 * np.pi * k[0] * xx + phase[2])
        p = 1.0 + 0.2 * np.cos(2 * np.pi * (xx - yy) + phase[3])
        base = np.stack([rho, rho * u, rho * v, p / 0.4 + 0.5 * rho * (u**2 + v**2)])
        for t in range(steps):
            out[b, t] = np.roll(base, t, axis=-1)
    return out


def quick_request(checkpoint, data, **changes) -> AnalysisRequest:
    """N = 2 classes × 2 steps, Euclidean estimator, no Lanczos: the cheapest real analysis."""
    fields = dict(
        checkpoints=(str(checkpoint),),
        data=str(data),
        classes=TINY_CLASSES,
        n_steps=2,
        estimator="euclidean",
        top_eigenvalue=False,
        device="cpu",
    )
    return AnalysisRequest(**{**fields, **changes})


def synthetic_result(
    n_checkpoints: int = 2,
    n_batches: int = 3,
    n_steps: int = 4,
    classes: tuple[str, ...] = ("CE-RP", "CE-CRP"),
    seed: int = 0,
) -> AnalysisResult:
    """Random arrays of a real result's shapes and dtypes ([S, B, T, C, T, C] etc.)."""
    rng = np.random.default_rng(seed)
    S, B, T, C = n_checkpoints, n_batches, n_steps, len(classes)
    N = T * C
    request = AnalysisRequest(
        checkpoints=tuple(f"/nowhere/ckpt{s}" for s in range(S)),
        data="/nowhere/data",
        classes=classes,
        n_steps=T,
        trajectories=tuple(range(B)),
        responses=("smse", "mass"),
    )
    shape = (S, B, T, C, T, C)
    return AnalysisResult(
        request=request,
        H={r: rng.standard_normal(shape) for r in request.responses},
        H_std={r: rng.standard_normal(shape) for r in request.responses},
        steps=np.arange(T),
        times=np.linspace(0.0, 0.1, T),
        classes=classes,
        checkpoints=tuple(f"ckpt{s}" for s in range(S)),
        distances=rng.random((B, N, N)),
        top_eigenvalues=rng.random((S, B)),
        subspace_spectra=np.where(rng.random((S, B, N)) < 0.8, rng.random((S, B, N)), np.nan),
        diagnostics=[[{"estimator": "subspace", "rank": N, "seconds": 0.1}] * B] * S,
        provenance={
            "device": "cpu",
            "checkpoint_fingerprints": {f"ckpt{s}": "ab" for s in range(S)},
        },
    )


# ------------------------------------------------------- solver datasets and workspaces -----

CE_CLASSES = ("CE-RP", "CE-CRP", "CE-RPUI")
NS_CLASSES = ("NS-Sines", "NS-Gauss")
VIT_OVERRIDES = {"patch": 4, "width": 16, "depth": 1, "heads": 2}
COMPARE = ("vit_tiny_s1",)  # the dashboard workspace's comparison checkpoint


def simulate(
    root: Path,
    name: str,
    family: str,
    classes: tuple[str, ...],
    *,
    snapshots: int = 6,
    t_end: float = 0.25,
    overwrite: bool = False,
    **changes,
) -> Path:
    """A real solver dataset ``root/name``: 5 trajectories per class at 16², split 3/1/1."""
    request = SimulationRequest(
        family=family,
        classes=classes,
        trajectories=5,
        resolution=16,
        snapshots=snapshots,
        t_end=t_end,
        split=(0.6, 0.2, 0.2),
        dataset_name=name,
        **changes,
    )
    return generate_dataset(request, root / name, overwrite=overwrite)


def copy_workspace(source: Path, target: Path) -> Path:
    """A copy of a workspace whose cache database this process may hold open, made by another
    process (``cp -a``). Reading and closing SQLite's files from this process would drop its
    POSIX locks on them (fcntl locks belong to the process, and any close() of the file
    releases all of them); a worker's writes could then corrupt the database under this
    process's open connections ("database disk image is malformed" in a later test)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    return target


def build_workspace(root: Path) -> Path:
    """The dashboard tests' workspace, as `coherence demo` leaves one (≈ 30 s on 2 busy cores).

    tiny_ce: 3 CE classes × 5 trajectories (3 train, 1 valid, 1 test) × 6 snapshots at 16².
    tiny_ns: 2 NS classes, no checkpoint fits it (a dataset the sidebar must not offer).
    Checkpoints: two 1-epoch tiny UNets (seeds 1, 2) and one tiny ViT, all on tiny_ce; the
    default analysis and its UNet-vs-ViT comparison, and their rollouts, already in the cache.
    """
    from coherence.cache.jobs import JobRunner
    from coherence.dashboard.selection import default_selection
    from coherence.workspace import checkpoints_dir, datasets_dir

    data = simulate(datasets_dir(root), "tiny_ce", "euler", CE_CLASSES)
    simulate(datasets_dir(root), "tiny_ns", "ns", NS_CLASSES)
    common = dict(epochs=1, batch_size=8, transitions=4, device="cpu", lr=3e-3)
    for seed in (1, 2):
        args = TrainingArgs(arch="unet", seed=seed, overrides=TINY_OVERRIDES, **common)
        train(data, checkpoints_dir(root) / f"unet_tiny_s{seed}", args)
    args = TrainingArgs(arch="vit", seed=1, overrides=VIT_OVERRIDES, **common)
    train(data, checkpoints_dir(root) / "vit_tiny_s1", args)
    selection = default_selection(root)
    runner = JobRunner(root)
    compared = replace(selection, compare=COMPARE)
    for request in compared.to_requests(root):
        runner.run(request)  # the default view and its UNet-vs-ViT comparison
    for group in compared.groups:  # and their rollouts, as `coherence study` leaves them
        runner.run_task("rollout", compared.rollout_spec(root, group))
    return root


def train_on_with_snapshots(root: Path) -> Path:
    """The dashboard workspace's two UNets resumed from 1 to 3 epochs, which keeps snapshots
    of epochs 1, 2 and 3 (training's default: powers of two plus the last)."""
    from coherence.workspace import checkpoints_dir, datasets_dir

    common = dict(epochs=3, batch_size=8, transitions=4, device="cpu", lr=3e-3)
    for seed in (1, 2):
        args = TrainingArgs(arch="unet", seed=seed, overrides=TINY_OVERRIDES, **common)
        train(datasets_dir(root) / "tiny_ce", checkpoints_dir(root) / f"unet_tiny_s{seed}", args)
    return root


def fill_sweeps(root: Path) -> Path:
    """Cache the default view's whole training dynamics and two sensitivity settings besides
    the default one (ekfac-krylov at λ = 1e-2, euclidean), as `coherence demo` does for the
    ViT: both sweep panels then draw curves, maps and the agreement of two estimators."""
    from coherence.cache.jobs import JobRunner
    from coherence.dashboard import sweeps
    from coherence.dashboard.selection import default_selection
    from coherence.dashboard.workspace_scan import scan_workspace

    catalog = scan_workspace(root)
    selection = default_selection(catalog)
    runner = JobRunner(root)
    epochs, _ = sweeps.dynamics_points(root, selection, runner)
    settings, _ = sweeps.sensitivity_points(root, selection, runner)
    wanted = [p for p in settings if not p.uses_damping or p.x in (1e-4, 1e-2)]
    for point in epochs + wanted:
        runner.run(point.request)
    return root


# A pure-Python busy loop pinned to one CPU: another user's program, as the scheduler sees it.
SPINNER = """
import os, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
parent = os.getppid()
print("spinning", flush=True)
while os.getppid() == parent:  # a test run killed with -9 leaves no spinning orphan
    pass
"""


@contextmanager
def busy_core() -> Iterator[None]:
    """Inside the block this thread may run on two CPUs, one of them kept busy by another
    process (restored and stopped after). Needs a machine of two cores or more."""
    before = os.sched_getaffinity(0)
    mine = set(sorted(before)[:2])
    spinner = subprocess.Popen(
        [sys.executable, "-c", SPINNER, str(min(mine))], stdout=subprocess.PIPE, text=True
    )
    try:
        os.sched_setaffinity(0, mine)
        assert spinner.stdout is not None and spinner.stdout.readline().strip() == "spinning"
        time.sleep(0.2)
        yield
    finally:
        os.sched_setaffinity(0, before)
        spinner.kill()
        spinner.wait(60)
