"""Scaled MSE (SMSE), METHOD.md §3: the training loss and the influence perturbation observable.

    r_C = (ŷ^c − y^c) / (RMS_xy(y^c) + 1e-6)        per example and channel c
    SMSE = mean over examples, channels and pixels of r_C²

Scaling by the target's RMS makes channels of different magnitude (density ~1, energy ~5)
count alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

RMS_EPS = 1e-6


def channel_rms(x: Tensor) -> Tensor:
    """RMS over the grid per example and channel: (B, F, H, W) -> (B, F, 1, 1)."""
    return x.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()


def scaled_residual(prediction: Tensor, target: Tensor) -> Tensor:
    """r_C, the SMSE residual field (B, F, H, W)."""
    return (prediction - target) / (channel_rms(target) + RMS_EPS)


def smse(prediction: Tensor, target: Tensor) -> Tensor:
    """Scalar SMSE over a batch."""
    return scaled_residual(prediction, target).pow(2).mean()


def smse_per_example(prediction: Tensor, target: Tensor) -> Tensor:
    """SMSE of each example: (B, F, H, W) -> (B,)."""
    return scaled_residual(prediction, target).pow(2).flatten(1).mean(dim=1)


@torch.no_grad()
def evaluate_smse(
    model: torch.nn.Module, inputs: Tensor, targets: Tensor, batch_size: int = 64
) -> float:
    """Mean one-step SMSE of a model over (inputs, targets) pairs, in batches."""
    total, count = 0.0, 0
    for start in range(0, inputs.shape[0], batch_size):
        x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
        total += float(smse_per_example(model(x), y).sum())
        count += x.shape[0]
    return total / max(count, 1)
