"""Fixtures for the cache tests: a tiny real dataset and checkpoint, quick requests, and
synthetic results of any shape (for store tests that need no computation)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from coherence.analysis.pipeline import AnalysisResult
from coherence.analysis.request import AnalysisRequest
from coherence.surrogates.training import train
from tests.surrogates.conftest import tiny_args, tiny_dataset  # noqa: F401 (fixture)

CLASSES = ("CE-RP", "CE-CRP")


@pytest.fixture(scope="session")
def trained_checkpoint(tiny_dataset, tmp_path_factory):  # noqa: F811
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
    root = tmp_path / "workspace"
    root.mkdir()
    return root


def quick_request(checkpoint, data, **changes) -> AnalysisRequest:
    """N = 2 classes × 2 steps, Euclidean estimator, no Lanczos: the cheapest real analysis."""
    fields = dict(
        checkpoints=(str(checkpoint),),
        data=str(data),
        classes=CLASSES,
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
