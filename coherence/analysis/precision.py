"""float32 means float32 inside an analysis, also on a GPU.

PyTorch lets cuDNN run float32 convolutions in TF32 by default (a 10-bit mantissa, about
1e-3 relative error per product). Training does not mind, but influence scores are sums of
products of per-example gradients, and TF32 error enters every Jacobian product of a solve:
on an H200 it put 100× more error into H than IEEE float32 (bench/results/gpu_precision.json).
``ieee_float32()`` asks for IEEE float32 in convolutions and matrix products while an analysis
runs and restores the caller's settings afterwards. COHERENCE_TF32=1 keeps TF32 on (it is
then part of the cache key: such results never stand in for IEEE ones).

The switches are process-wide: blocks that overlap, nested or in threads, share one count,
so the first to enter switches TF32 off and the last to leave restores it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch

ENV = "COHERENCE_TF32"

_lock = threading.Lock()
_depth = 0
_changed: list[tuple[object, str, object]] = []


def tf32_allowed() -> bool:
    """True when COHERENCE_TF32 asks to keep TF32 (1, true, yes)."""
    return os.environ.get(ENV, "").strip().lower() in {"1", "true", "yes"}


def _switch_off() -> list[tuple[object, str, object]]:
    """Turn TF32 off; returns (owner, attribute, old value) of each switch changed. The
    allow_tf32 flags set cuDNN's conv and rnn together; a switch already off is left as it
    is, so its newer fp32_precision value ("none") survives. Where the caller set torch ≥
    2.9's per-operator fp32_precision for one of them, torch refuses to read allow_tf32: then
    the per-operator settings are switched instead."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    changed: list[tuple[object, str, object]] = []
    try:
        for owner in (cudnn, matmul):
            if owner.allow_tf32:
                owner.allow_tf32 = False
                changed.append((owner, "allow_tf32", True))
    except RuntimeError:  # the two TF32 APIs were mixed: use the per-operator one
        for owner in (cudnn.conv, matmul):
            old = owner.fp32_precision
            if old != "ieee":
                owner.fp32_precision = "ieee"
                changed.append((owner, "fp32_precision", old))
    return changed


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """IEEE float32 in cuDNN convolutions and CUDA matrix products inside the block (no
    effect on CPU, where float32 is IEEE already), unless COHERENCE_TF32=1."""
    global _depth, _changed
    if tf32_allowed() or not torch.cuda.is_available():
        yield
        return
    with _lock:
        if _depth == 0:
            _changed = _switch_off()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for owner, name, value in reversed(_changed):
                    setattr(owner, name, value)
                _changed = []
