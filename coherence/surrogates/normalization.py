"""Physical-space normalization inside the surrogate, shared by every architecture.

A checkpoint must map a *physical* state to the *physical* next state with nothing else
loaded (ARCHITECTURE.md, ``surrogates.load``). So the per-channel statistics of the training
data live in the module as buffers and travel with its ``state_dict``:

    y = net((x − mean) / std) · std + mean          (per channel c; mean, std ∈ R^F)

Everything here is per-example and free of in-place updates, ``.item()`` and data-dependent
control flow, so ``torch.func.functional_call``, ``vmap``, ``jvp`` and ``vjp`` see a pure
function of (parameters, buffers, input). Cost: two broadcast multiply-adds per forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from coherence.errors import RequestError


class NormalizedSurrogate(nn.Module):
    """Base class: physical [N, F, H, W] → physical next state via a normalized network.

    Subclasses implement :meth:`forward_normalized` (normalized → normalized) and
    :meth:`check_spatial` (which grid sizes they accept), and set ``arch_name``.
    """

    arch_name: str = "surrogate"
    preset: str | None = None  # registry preset it was built from, if any

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.register_buffer("state_mean", torch.zeros(channels))
        self.register_buffer("state_std", torch.ones(channels))

    def set_normalization(self, mean: Tensor | Sequence[float], std: Tensor | Sequence[float]):
        """Store per-channel training statistics (shape [F], finite, std > 0)."""
        values = {}
        for name, value in (("mean", mean), ("std", std)):
            tensor = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
            if tensor.shape != (self.channels,):
                raise RequestError(
                    f"normalization {name} has shape {tuple(tensor.shape)}; it must be "
                    f"[{self.channels}], one value per state channel"
                )
            if not bool(torch.isfinite(tensor).all()):
                raise RequestError(
                    f"normalization {name} {tensor.tolist()} holds NaN or inf; recompute it "
                    "from finite training states"
                )
            values[name] = tensor
        if not bool((values["std"] > 0).all()):
            raise RequestError(
                f"normalization std {values['std'].tolist()} must be > 0 in every channel; "
                "a constant channel needs a positive floor (e.g. std = max(std, 1e-6))"
            )
        with torch.no_grad():
            self.state_mean.copy_(values["mean"].to(self.state_mean))
            self.state_std.copy_(values["std"].to(self.state_std))
        return self

    def normalize(self, x: Tensor) -> Tensor:
        """(x − mean) / std per channel; x is (B, F, H, W)."""
        return (x - self.state_mean[:, None, None]) / self.state_std[:, None, None]

    def denormalize(self, z: Tensor) -> Tensor:
        """z · std + mean per channel; z is (B, F, H, W)."""
        return z * self.state_std[:, None, None] + self.state_mean[:, None, None]

    def check_spatial(self, height: int, width: int) -> None:
        """Raise RequestError when the grid size does not suit the architecture."""

    def forward_normalized(self, z: Tensor) -> Tensor:
        """Normalized state (B, F, H, W) → normalized next state (B, F, H, W)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Physical state (B, F, H, W) → physical next state (B, F, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise RequestError(
                f"{self.arch_name} input has shape {tuple(x.shape)}; it must be "
                f"[N, {self.channels}, H, W] (batch, state channels, grid)"
            )
        self.check_spatial(x.shape[-2], x.shape[-1])
        return self.denormalize(self.forward_normalized(self.normalize(x)))
