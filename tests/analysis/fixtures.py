"""Tiny next-state models and an independent dense float64 influence reference.

The reference builds every J_n explicitly with ``torch.func.jacrev`` (its own flattening, not
the package's), forms η = Σ_n J_nᵀJ_n densely and solves with ``torch.linalg.solve``; the
residuals are written again here, loop by loop, from METHOD.md §4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev


class TinyConv(nn.Module):
    """x + conv2(silu(conv1(x))), 3×3 circular convs: a per-example next-state model."""

    def __init__(self, channels: int, hidden: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1, padding_mode="circular")
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1, padding_mode="circular")

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(nn.functional.silu(self.conv1(x)))


class SmallerConv(nn.Module):
    """conv3×3 (circular) → silu → conv1×1, F = 2: P = 44 parameters, fewer than N = 48."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular")
        self.conv2 = nn.Conv2d(2, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(nn.functional.silu(self.conv1(x)))


def euler_states(n: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Positive density and energy, O(1) momenta: (inputs, targets) float64 [n, 4, size, size]."""
    x = torch.randn(n, 4, size, size, generator=generator, dtype=torch.float64)
    x[:, 0] = 1.0 + 0.3 * x[:, 0].abs()
    x[:, 3] = 2.5 + 0.5 * x[:, 3].abs()
    y = x + 0.1 * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return x, y


# ------------------------------------------------------------------- dense reference ------


def reference_residual(response: str, prediction: Tensor, inputs: Tensor, target: Tensor):
    """r_A from METHOD.md §4, written with explicit loops over examples and channels."""
    out = torch.zeros_like(prediction)
    n, f = prediction.shape[:2]
    for i in range(n):
        if response == "smse":
            for c in range(f):
                rms = math.sqrt(float((target[i, c] ** 2).mean()))
                out[i, c] = (prediction[i, c] - target[i, c]) / (rms + 1e-6)
        else:
            c = {"mass": 0, "energy": 3}[response]
            m_in = float(inputs[i, c].sum())
            out[i, c] = (float(prediction[i, c].sum()) - m_in) / (m_in + 1e-6)
    return out


@dataclass
class DenseReference:
    """Dense J [N, D, P], η [P, P] and r_A for each response, all float64."""

    jac: Tensor
    residuals: dict[str, Tensor]

    @property
    def d(self) -> int:
        return self.jac.shape[1]

    @property
    def eta(self) -> Tensor:
        return torch.einsum("ndp,ndq->pq", self.jac, self.jac)

    def grads(self, response: str) -> Tensor:
        """g_A(n) = J_nᵀ r_A(n) as rows [N, P]."""
        return torch.einsum("ndp,nd->np", self.jac, self.residuals[response])

    def full(self, response: str, damping: float) -> Tensor:
        """g_Aᵀ (η + λI)⁻¹ g_B / D."""
        g = self.grads("smse")
        eye = torch.eye(g.shape[1], dtype=g.dtype)
        y = torch.linalg.solve(self.eta + damping * eye, g.T)  # (P, N)
        return self.grads(response) @ y / self.d

    def euclidean(self, response: str) -> Tensor:
        return self.grads(response) @ self.grads("smse").T / self.d

    def basis(self, energy_threshold: float) -> np.ndarray:
        """Orthonormal Q [P, s] from numpy's SVD of the dense G, same energy rule."""
        g = self.grads("smse").T.numpy()  # (P, N)
        u, sigma, _ = np.linalg.svd(g, full_matrices=False)
        energy = np.cumsum(sigma**2)
        s = int(np.searchsorted(energy, energy_threshold * energy[-1])) + 1
        return u[:, :s]

    def galerkin(self, response: str, damping: float, energy_threshold: float) -> Tensor:
        """(Qᵀg_A)ᵀ (QᵀηQ + λI)⁻¹ (QᵀG) / D with the numpy basis."""
        q = torch.from_numpy(self.basis(energy_threshold))
        metric = q.T @ self.eta @ q
        eye = torch.eye(q.shape[1], dtype=q.dtype)
        coeff = torch.linalg.solve(metric + damping * eye, q.T @ self.grads("smse").T)
        return (q.T @ self.grads(response).T).T @ coeff / self.d

    def subspace_eigenvalues(self, energy_threshold: float) -> Tensor:
        q = torch.from_numpy(self.basis(energy_threshold))
        return torch.linalg.eigvalsh(q.T @ self.eta @ q).flip(0)


def dense_reference(model: nn.Module, inputs: Tensor, targets: Tensor) -> DenseReference:
    """Jacobians by jacrev over a flat parameter vector (own flattening), residuals by loops."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(th: Tensor, x: Tensor) -> Tensor:
        parts, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = math.prod(shape)
            parts[name] = th[start : start + size].reshape(shape)
            start += size
        return functional_call(model, parts, (x[None],))[0].reshape(-1)

    jac = torch.stack([jacrev(f)(theta, x) for x in inputs])  # (N, D, P)
    with torch.no_grad():
        prediction = model(inputs)
    responses = ["smse"] + (["mass", "energy"] if inputs.shape[1] == 4 else [])
    residuals = {
        r: reference_residual(r, prediction, inputs, targets).reshape(len(inputs), -1)
        for r in responses
    }
    return DenseReference(jac, residuals)


# ------------------------------------------------- small trained models (fidelity) -------


def damped(ref: DenseReference, damping: float) -> Tensor:
    """The dense A = η + λI."""
    return ref.eta + damping * torch.eye(ref.jac.shape[2], dtype=torch.float64)


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ (Frobenius)."""
    return float(torch.linalg.norm(actual - expected) / torch.linalg.norm(expected))


@dataclass
class TrainedSmall:
    """A TinyConv trained on compressible-Euler transitions at 8², an analysis batch of
    3 classes × 16 steps (N = 48, time-major) and its dense float64 reference."""

    model: nn.Module
    inputs: Tensor
    targets: Tensor
    reference: DenseReference


def train_small(
    hidden: int,
    seed: int,
    resolution: int = 8,
    steps: int = 400,
    times: Sequence[int] | None = None,
) -> TrainedSmall:
    """Full-batch Adam on 12 training trajectories (4 per class); test trajectory seed 7,
    analysed at the steps ``times`` (default all 16: N = 48; fewer give the bench's models
    with more parameters than the batch has outputs)."""
    from coherence.simulation.classes import get_class
    from coherence.simulation.euler import evolve

    classes = ("CE-RP", "CE-CRP", "CE-RPUI")

    def trajectory(c: int, sample_seed: int) -> Tensor:
        initial = get_class(classes[c]).sample(1, resolution, seed=sample_seed).double()
        return evolve(initial, torch.linspace(0, 16 * 0.05, 17))[0]  # (17, 4, H, W)

    train = [trajectory(c, 100 + k) for c in range(3) for k in range(4)]
    x_train = torch.cat([t[:-1] for t in train])
    y_train = torch.cat([t[1:] for t in train])
    torch.manual_seed(seed)
    model = TinyConv(4, hidden).double()
    optimiser = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(steps):
        optimiser.zero_grad()
        ((model(x_train) - y_train) ** 2).mean().backward()
        optimiser.step()
    stacked = torch.stack([trajectory(c, 7) for c in range(3)], dim=1)  # (17, C, 4, H, W)
    steps_in = list(range(16)) if times is None else list(times)
    x = stacked[steps_in].reshape(-1, 4, resolution, resolution)
    y = stacked[[t + 1 for t in steps_in]].reshape(-1, 4, resolution, resolution)
    return TrainedSmall(model, x, y, dense_reference(model, x, y))
