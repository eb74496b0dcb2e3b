"""float32 means float32 inside an analysis, also on a GPU.

PyTorch lets cuDNN run float32 convolutions in TF32 by default (a 10-bit mantissa, about
1e-3 relative error per product). Training does not mind, but influence scores are sums of
products of per-example gradients, and TF32 error would enter every Jacobian product of a
solve. ``ieee_float32()`` asks for IEEE float32 in convolutions and matrix products while an
analysis runs and restores the caller's settings afterwards. COHERENCE_TF32=1 keeps TF32 on
(faster on Ampere and later; bench/results/gpu_precision.json measures both).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

ENV = "COHERENCE_TF32"


def tf32_allowed() -> bool:
    """True when COHERENCE_TF32 asks to keep TF32 (1, true, yes)."""
    return os.environ.get(ENV, "").strip().lower() in {"1", "true", "yes"}


def _switches() -> list[tuple[object, str]]:
    """The two TF32 switches as (owner, attribute). The allow_tf32 flags rather than torch
    ≥ 2.9's per-operator fp32_precision: they set cuDNN's conv and rnn together, so a reader
    of either API sees one answer (mixing the two makes torch refuse to read the flag)."""
    return [(torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")]


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """IEEE float32 in cuDNN convolutions and CUDA matrix products inside the block (no
    effect on CPU, where float32 is IEEE already), unless COHERENCE_TF32=1."""
    if tf32_allowed() or not torch.cuda.is_available():
        yield
        return
    switches = _switches()
    saved = [getattr(owner, name) for owner, name in switches]
    try:
        for owner, name in switches:
            setattr(owner, name, False)
        yield
    finally:
        for (owner, name), value in zip(switches, saved, strict=True):
            setattr(owner, name, value)
