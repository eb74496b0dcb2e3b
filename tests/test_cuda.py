"""The GPU paths against the same independent references as the CPU tests.

Skipped where no CUDA GPU is visible (CI has none); run on a GPU machine with
``pytest tests/test_cuda.py`` (bench/gpu_check.sh runs it first). Each estimator on CUDA in
float64 must equal the dense float64 reference (or, where no dense formula exists, the CPU
result) to float64 rounding; float32 on CUDA must stay within float32's accuracy, which is
what ``coherence.analysis.precision`` protects from TF32 convolutions; a checkpoint trained on
the GPU loads and analyses on the CPU and gives the same standardised maps.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from coherence.analysis.influence import compute_influence, top_eigenvalue
from coherence.analysis.pipeline import run_analysis
from coherence.analysis.request import AnalysisRequest
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates.training import TrainingArgs, train
from tests.analysis.fixtures import TinyConv, dense_reference, euler_states
from tests.analysis.test_pipeline import write_dataset
from tests.fixtures import TINY_OVERRIDES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
RESPONSES = ("smse", "mass", "energy")
DAMPING = 0.1  # as the CPU cg test: κ(η + λI) small enough for rtol 1e-11


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    return float(torch.linalg.norm(actual - expected) / torch.linalg.norm(expected))


@pytest.fixture(scope="module")
def problem():
    """TinyConv (P = 296) on N = 6 Euler-like states at 4², its dense float64 reference."""
    torch.manual_seed(0)
    model = TinyConv(4).double()
    x, y = euler_states(6, 4, torch.Generator().manual_seed(1234))
    return model, x, y, dense_reference(model, x, y)


def test_exact_estimators_on_cuda_match_the_dense_reference(problem):
    model, x, y, ref = problem
    gpu_model = copy.deepcopy(model).to(CUDA)
    expected = {
        "euclidean": lambda r: ref.euclidean(r),
        "subspace": lambda r: ref.galerkin(r, DAMPING, 1 - 1e-4),
        "cg": lambda r: ref.full(r, DAMPING),
    }
    for estimator, want in expected.items():
        result = compute_influence(
            gpu_model,
            x.to(CUDA),
            y.to(CUDA),
            response=RESPONSES,
            estimator=estimator,
            damping=DAMPING,
            **({"rtol": 1e-11, "max_iter": 2000} if estimator == "cg" else {}),
        )
        assert result.H.device.type == "cuda" and result.diagnostics.device.startswith("cuda")
        for r in RESPONSES:
            assert rel_err(result.H_by_response[r], want(r)) < 1e-8, (estimator, r)


@pytest.mark.parametrize(
    ("estimator", "options"),
    [("krylov", {"depth": 2}), ("ekfac", {}), ("ekfac-krylov", {}), ("ekfac-krylov", {"depth": 3})],
)
def test_approximate_estimators_on_cuda_equal_the_cpu_result(problem, estimator, options):
    """No dense formula for these: the GPU must give the CPU's float64 numbers."""
    model, x, y, _ = problem
    found = {}
    for device in ("cpu", CUDA):
        result = compute_influence(
            copy.deepcopy(model).to(device),
            x.to(device),
            y.to(device),
            response=RESPONSES,
            estimator=estimator,
            damping=DAMPING,
            **options,
        )
        found[str(device)] = result.H_by_response
    for r in RESPONSES:
        assert rel_err(found["cuda"][r], found["cpu"][r]) < 1e-8, r


def test_float32_on_cuda_keeps_float32_accuracy(problem, monkeypatch):
    """The CPU test's tolerance (1e-3 of the float64 reference) holds on the GPU: TF32 is
    off inside the analysis unless COHERENCE_TF32=1."""
    monkeypatch.delenv("COHERENCE_TF32", raising=False)
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    model, x, y, ref = problem
    model32 = copy.deepcopy(model).float().to(CUDA)
    for estimator, want in (
        ("subspace", ref.galerkin("smse", DAMPING, 1 - 1e-4)),
        ("euclidean", ref.euclidean("smse")),
    ):
        result = compute_influence(
            model32, x.float().to(CUDA), y.float().to(CUDA), estimator=estimator, damping=DAMPING
        )
        assert result.H.dtype == torch.float32
        assert rel_err(result.H, want) < 1e-3, estimator
    # the caller's settings are restored
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_top_eigenvalue_on_cuda_matches_dense_eigvalsh(problem):
    model, x, _, ref = problem
    expected = float(torch.linalg.eigvalsh(ref.eta)[-1]) + 0.01
    got = top_eigenvalue(copy.deepcopy(model).to(CUDA), x.to(CUDA), damping=0.01, tol=1e-12).value
    assert got == pytest.approx(expected, rel=1e-8)


def test_checkpoint_trained_on_cuda_analyses_alike_on_cpu_and_cuda(tmp_path):
    data = write_dataset(tmp_path / "ce")
    out = tmp_path / "unet_cuda"
    args = TrainingArgs(
        seed=1, epochs=1, batch_size=8, transitions=4, device="cuda", overrides=TINY_OVERRIDES
    )
    train(data, out, args)
    model, _ = ckpt.load(out)  # loads onto the CPU
    assert next(model.parameters()).device.type == "cpu"
    results = {}
    for device in ("cpu", "cuda"):
        request = AnalysisRequest(
            checkpoints=(str(out),),
            data=str(data),
            classes=("CE-RP", "CE-CRP"),
            t_start=1,
            n_steps=2,
            trajectories=(0,),
            responses=("smse", "mass"),
            device=device,
        )
        results[device] = run_analysis(request)
        assert results[device].diagnostics[0][0]["device"].startswith(device)
    for r in ("smse", "mass"):  # float32 runs, compared as the CPU float32 tests compare
        gpu, cpu = (torch.from_numpy(results[d].H_std[r]) for d in ("cuda", "cpu"))
        assert rel_err(gpu, cpu) < 1e-3, r
    np.testing.assert_allclose(
        results["cuda"].top_eigenvalues, results["cpu"].top_eigenvalues, rtol=1e-3
    )
