"""Residual observables r_A (METHOD.md §4): the cotangent fields whose VJPs give g_A = Jᵀ r_A.

Each residual is an [N, F, H, W] field evaluated at the current parameters from one batch
forward, then held FIXED: g_A(n) = J_nᵀ r_A(n) is the gradient of the linear functional
φ_A(θ) = ⟨r_A(n), f_θ(x_n)⟩ with r_A frozen, i.e. r is not differentiated through. For
SMSE this is the gradient of ½‖r_C‖² up to the positive per-channel factor
1/(RMS(y^c) + ε); for mass/energy it is the gradient of ½ r² up to 1/(M[x] + ε). The frozen
form is what the counterfactual check (METHOD.md §7) measures: the change of ⟨r_A, ŷ⟩.
"""

from __future__ import annotations

import torch
from torch import Tensor

# the response vocabulary lives in vocabulary.py (torch-free); re-exported for old imports
from coherence.analysis.vocabulary import (  # noqa: F401
    Response,
    parse_response,
    parse_responses,
)
from coherence.errors import RequestError
from coherence.simulation.families import FAMILIES, Family

EPS = 1e-6  # the ε in the SMSE scale and in the conservation denominators (METHOD.md)

_EULER_CHANNELS = FAMILIES[Family.EULER].channels  # (density, momentum_x, momentum_y, energy)


_CONSERVED_CHANNEL = {
    Response.MASS: _EULER_CHANNELS.index("density"),
    Response.ENERGY: _EULER_CHANNELS.index("energy"),
}


def check_response_applies(response: Response, n_channels: int) -> None:
    """Mass and energy exist only for the compressible-Euler channel layout (F = 4)."""
    if response in _CONSERVED_CHANNEL and n_channels != len(_EULER_CHANNELS):
        channels = ", ".join(_EULER_CHANNELS)
        raise RequestError(
            f"{response.value} response needs compressible-Euler data (channels {channels}); "
            f"this batch has F={n_channels} channels; choose response 'smse'"
        )


def smse_residual(prediction: Tensor, target: Tensor) -> Tensor:
    """r_C = (ŷ − y) / (RMS_xy(y^c) + ε), RMS over the pixels of each target channel of each
    example. [N, F, H, W] → [N, F, H, W]."""
    rms = target.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()  # (N, F, 1, 1)
    return (prediction - target) / (rms + EPS)


def conserved_residual(prediction: Tensor, inputs: Tensor, channel: int) -> Tensor:
    """(M[ŷ] − M[x]) / (M[x] + ε), M = Σ_pixels of ``channel``, x the INPUT state; the scalar
    is written on every pixel of that channel and 0 elsewhere. [N, F, H, W] → same."""
    m_pred = prediction[:, channel].sum(dim=(-2, -1))  # (N,)
    m_in = inputs[:, channel].sum(dim=(-2, -1))  # (N,)
    out = torch.zeros_like(prediction)
    out[:, channel] = ((m_pred - m_in) / (m_in + EPS))[:, None, None]
    return out


def residual(response: Response, prediction: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
    """r_A for one response, detached (a constant cotangent). All tensors [N, F, H, W]."""
    check_response_applies(response, prediction.shape[1])
    prediction, inputs, targets = prediction.detach(), inputs.detach(), targets.detach()
    if response is Response.SMSE:
        return smse_residual(prediction, targets)
    return conserved_residual(prediction, inputs, _CONSERVED_CHANNEL[response])
