"""Activation bytes of one example: what autograd keeps for a backward, counted by hand."""

from __future__ import annotations

import torch
from torch import nn

from coherence.probe import activation_bytes


class Inside(nn.Module):
    """Linear(64→256) → tanh → ×3 → Linear(256→4): tanh and the product are no module's
    output, yet their results are kept for the backward."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 256), nn.Linear(256, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)) * 3)


def test_counts_what_a_module_computes_inside():
    # saved: the input of a (64), tanh's result (256), the input of b (256); not the weights
    assert activation_bytes(Inside(), torch.randn(1, 64)) == 4 * (64 + 256 + 256)


def test_module_outputs_are_the_floor_when_nothing_is_saved():
    model = Inside().requires_grad_(False)
    assert activation_bytes(model, torch.randn(1, 64)) == 4 * (256 + 4 + 4)


def test_a_view_counts_one_example_not_its_batch():
    batch = torch.randn(48, 64)
    assert activation_bytes(Inside(), batch[:1]) == activation_bytes(Inside(), batch[:1].clone())
