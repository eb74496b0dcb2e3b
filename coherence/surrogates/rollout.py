"""Autoregressive rollouts and the one-step-versus-rollout error comparison (METHOD.md §6.7).

One-step (teacher-forced) error feeds the true state at every step; rollout error feeds the
model its own predictions. The paper's point: the first does not predict the second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from coherence.errors import RequestError
from coherence.surrogates.losses import smse_per_example


@torch.no_grad()
def rollout(model: nn.Module, initial: Tensor, steps: int) -> Tensor:
    """Feed the model its own output: [B, F, H, W] -> [B, steps + 1, F, H, W] (initial first)."""
    if steps < 0:
        raise RequestError(f"steps={steps}: a rollout needs steps ≥ 0")
    states = [initial]
    for _ in range(steps):
        states.append(model(states[-1]))
    return torch.stack(states, dim=1)


@dataclass(frozen=True)
class RolloutErrors:
    """Per-example SMSE by horizon h = 1..H (arrays [B, H]) and the rollout itself."""

    one_step: np.ndarray  # teacher-forced: model(s_{t0+h-1}) vs s_{t0+h}
    rollout: np.ndarray  # autoregressive: h-th rollout state vs s_{t0+h}
    prediction: np.ndarray  # [B, H + 1, F, H, W] rollout states, initial first

    @property
    def horizons(self) -> np.ndarray:
        return np.arange(1, self.one_step.shape[1] + 1)


@torch.no_grad()
def rollout_errors(
    model: nn.Module, trajectories: Tensor, start: int = 0, horizon: int | None = None
) -> RolloutErrors:
    """Compare one-step and rollout SMSE on true trajectories [B, T, F, H, W] from ``start``."""
    if trajectories.ndim != 5:
        raise RequestError(
            f"trajectories have shape {tuple(trajectories.shape)}; expected [B, T, F, H, W]"
        )
    n_steps = trajectories.shape[1]
    if not 0 <= start < n_steps - 1:
        raise RequestError(
            f"start={start}: a rollout needs a later snapshot; choose 0..{n_steps - 2}"
        )
    available = n_steps - 1 - start
    horizon = available if horizon is None else horizon
    if not 1 <= horizon <= available:
        raise RequestError(
            f"horizon={horizon}: from start {start} the trajectory has {available} later "
            f"snapshots; choose 1..{available}"
        )
    truth = trajectories[:, start : start + horizon + 1]
    predicted = rollout(model, truth[:, 0], horizon)
    rollout_err = torch.stack(
        [smse_per_example(predicted[:, h], truth[:, h]) for h in range(1, horizon + 1)], dim=1
    )
    inputs = truth[:, :-1].reshape(-1, *truth.shape[2:])  # (B·H, F, H, W)
    one_step = smse_per_example(model(inputs), truth[:, 1:].reshape(-1, *truth.shape[2:]))
    return RolloutErrors(
        one_step=one_step.reshape(truth.shape[0], horizon).cpu().numpy(),
        rollout=rollout_err.cpu().numpy(),
        prediction=predicted.cpu().numpy(),
    )
