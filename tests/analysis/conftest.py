"""Fixtures of the analysis tests: tiny next-state models, their batches, and a small model
trained on compressible-Euler transitions with its dense reference (tests/analysis/fixtures.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tests.analysis.fixtures import (
    DenseReference,
    TinyConv,
    TrainedSmall,
    dense_reference,
    euler_states,
    train_small,
)
from tests.fixtures import torch_threads


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def ce_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyConv(4).double()  # P = 296


@pytest.fixture
def ce_batch(generator: torch.Generator) -> tuple[Tensor, Tensor]:
    return euler_states(6, 4, generator)  # N = 6, D = 64


@pytest.fixture
def ns_model() -> nn.Module:
    torch.manual_seed(1)
    return TinyConv(2).double()  # P = 150


@pytest.fixture
def ns_batch(generator: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(5, 2, 6, 6, generator=generator, dtype=torch.float64)
    return x, x + 0.1 * torch.randn(x.shape, generator=generator, dtype=torch.float64)


@pytest.fixture(scope="session")
def trained_small() -> TrainedSmall:
    """P = 880 (hidden 12), trained; built once per session (≈ 15 s on one thread)."""
    with torch_threads(1):
        return train_small(hidden=12, seed=2)


@pytest.fixture
def ce_reference(ce_model, ce_batch) -> DenseReference:
    """The dense float64 J, η and residuals of ``ce_model`` on ``ce_batch``."""
    return dense_reference(ce_model, *ce_batch)
