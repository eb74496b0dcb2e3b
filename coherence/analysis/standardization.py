"""Row standardization of influence matrices (METHOD.md §4).

Ĥ[r, p] = H[r, p] / std_p(H[r, :]): the sample standard deviation (N − 1 denominator) over
the N perturbation columns of each row; H itself is not centred. A perfectly local row
(one nonzero entry h) has std |h|/√N, so Ĥ = ±√N there and 0 elsewhere: plots use [0, √N].
"""

from __future__ import annotations

import torch
from torch import Tensor

from coherence.errors import RequestError


def standardize(H: Tensor) -> Tensor:
    """Ĥ = H / std over the last axis (unbiased), for [..., N, N] (any leading batch dims).

    A row whose std is zero — all entries equal, including an all-zero row — carries no
    ranking information and is returned as all zeros instead of inf/NaN. "Zero" means
    std ≤ 8·eps(dtype)·max_p |H[r, p]|, so a constant row that picks up rounding noise is
    treated the same.
    """
    if H.ndim < 2 or H.shape[-1] != H.shape[-2]:
        raise RequestError(f"standardize needs square matrices [..., N, N]; got {tuple(H.shape)}")
    return standardize_rows(H)


def standardize_rows(H: Tensor, *, precision: torch.dtype | None = None) -> Tensor:
    """``standardize``'s rule for any rows [..., K, N], square or not (a sample of K rows of
    an N × N map: bench's reference rows). ``precision``: the dtype whose eps judges a row
    flat (default H's own), for rows computed in float32 and standardised in float64."""
    if H.shape[-1] < 2:
        raise RequestError("standardize needs N ≥ 2 columns (a sample std over one is undefined)")
    if not H.is_floating_point():
        H = H.double()
    std = H.std(dim=-1, keepdim=True, correction=1)  # (..., K, 1)
    scale = H.abs().amax(dim=-1, keepdim=True)
    flat = std <= 8 * torch.finfo(precision or H.dtype).eps * scale
    return torch.where(flat, torch.zeros_like(H), H / torch.where(flat, 1, std))
