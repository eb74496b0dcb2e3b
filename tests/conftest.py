"""Shared test set-up: torch threads for the 2 CI cores (override: COHERENCE_TORCH_THREADS=1
when other jobs share the machine; spinning OpenMP threads slow down badly when oversubscribed).

Compute slots (coherence.cache.slots) of a test session live in a private directory, so tests
neither queue behind real work on the machine nor hold up anyone else's; so do the on-disk
memos of file digests (coherence.digests), which stay out of the user's cache directory.

Fixtures shared by several test folders live here (one instance per session each): the tiny
Well dataset, a checkpoint trained on it, a fresh workspace. Helpers tests import live in
tests/fixtures.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
import torch

_PRIVATE_DIRS = []  # made by this session (not given by the caller): removed at its end
for _variable, _prefix in (
    ("COHERENCE_SLOTS_DIR", "coherence-test-slots-"),
    ("COHERENCE_DIGEST_CACHE", "coherence-test-digests-"),
):
    if _variable not in os.environ:
        os.environ[_variable] = tempfile.mkdtemp(prefix=_prefix)
        _PRIVATE_DIRS.append(os.environ[_variable])
os.environ.setdefault("COHERENCE_FIRST_CHART_PAUSE", "0")  # AppTest has no browser to wait for
# jobs compute here unless a test points them at its own Ray cluster (tests/executors)
os.environ.pop("COHERENCE_RAY_ADDRESS", None)

# the suite's jobs (and its subprocesses) on a fixed count, not the load of the moment: tests
# compare results bit for bit; tests of the load-aware count unset it
os.environ.setdefault("COHERENCE_TORCH_THREADS", "2")
torch.set_num_threads(int(os.environ["COHERENCE_TORCH_THREADS"]))

from coherence.simulation.dataset import SPLITS  # noqa: E402 (after the environment)
from coherence.simulation.wellformat import write_well_file  # noqa: E402
from coherence.surrogates.training import train  # noqa: E402
from tests.fixtures import TINY_CLASSES, advected_states, tiny_args, torch_threads  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's private slot and digest directories: every run left two in /tmp."""
    for directory in _PRIVATE_DIRS:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def single_thread():
    """Tiny models and small FFTs gain nothing from threads; on a shared 2-core box the thread
    barriers of many small ops cost more than the work, so these tests run on one thread."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """2 classes × (4 train, 1 valid, 2 test) trajectories, 5 snapshots at 16²."""
    root = tmp_path_factory.mktemp("tiny_ds")
    times = np.linspace(0, 0.2, 5)
    for c, name in enumerate(TINY_CLASSES):
        for s, (split, n) in enumerate(zip(SPLITS, (4, 1, 2), strict=True)):
            write_well_file(
                root / "data" / split / f"{name}.hdf5",
                advected_states(n, 5, 16, seed=10 * c + s),
                times,
                family="euler",
                class_name=name,
                dataset_name="tiny",
            )
    return root


@pytest.fixture(scope="session")
def trained_checkpoint(tiny_dataset, tmp_path_factory):
    """A 2-epoch tiny UNet on the tiny dataset (≈ 1 s)."""
    out = tmp_path_factory.mktemp("cache_ckpt") / "unet_tiny"
    args = tiny_args()
    return train(tiny_dataset, out, args)


@pytest.fixture
def checkpoint(trained_checkpoint, tmp_path):
    """A private copy, so a test may move it or change its bytes."""
    copy = tmp_path / "checkpoints" / trained_checkpoint.name
    shutil.copytree(trained_checkpoint, copy)
    return copy


@pytest.fixture
def workspace(tmp_path):
    """An empty workspace directory (tests/dashboard overrides it with a populated one)."""
    root = tmp_path / "workspace"
    root.mkdir()
    return root
