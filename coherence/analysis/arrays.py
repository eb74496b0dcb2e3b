"""Influence tensors as validated float64 numpy, their quartile bands and their JSON form:
the plumbing under every summary (``summaries``, ``distance``, ``scores``, ``trends``).

Layout: [S, B, T, C, T, C] = [checkpoints (seeds), batches, t_r, c_r, t_p, c_p], rows =
response, columns = perturbation; numpy arrays or torch tensors are accepted (never imported).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from coherence.errors import RequestError

LAYOUT = "[checkpoints, batches, t_r, c_r, t_p, c_p]"


def to_numpy(x: Any) -> np.ndarray:
    """float64 numpy copy of an array or a (CPU/GPU, grad-tracking) torch tensor."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point() or x.is_complex():
            x = x.double()
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


def as_influence(H: Any, name: str = "H_std") -> np.ndarray:
    """Validate an influence tensor [S, B, T, C, T, C] and return it as float64 numpy."""
    try:
        h = to_numpy(H)
    except (TypeError, ValueError) as error:
        raise RequestError(f"{name} is not a numeric array ({error})") from error
    if h.ndim != 6:
        raise RequestError(
            f"{name} has shape {h.shape}; expected {LAYOUT} (6 axes). Wrap one batch "
            f"[T, C, T, C] as {name}[None, None]; reshape an N×N matrix to [T, C, T, C] "
            f"with example n = t·C + c."
        )
    _, _, t, c, t2, c2 = h.shape
    if (t, c) != (t2, c2):
        raise RequestError(
            f"{name} has shape {h.shape}: response axes (T, C) = {(t, c)} differ from "
            f"perturbation axes {(t2, c2)}; one batch must be square, laid out {LAYOUT}"
        )
    if min(h.shape) == 0:
        raise RequestError(f"{name} has an empty axis (shape {h.shape}); layout {LAYOUT}")
    bad = ~np.isfinite(h)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise RequestError(
            f"{name} has {int(bad.sum())} NaN/inf entries (first at {LAYOUT} = {first}); "
            f"recompute that checkpoint's influence or drop it"
        )
    return h


def json_safe(x: Any) -> Any:
    """JSON-safe copy: arrays → lists, NaN/inf → None, numpy scalars → Python."""
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


@dataclass(frozen=True)
class Band:
    """Median and interquartile band (Q1, Q3) across seeds, elementwise."""

    median: np.ndarray
    q1: np.ndarray
    q3: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"median": self.median, "q1": self.q1, "q3": self.q3})


def quartiles(values: Any, axis: int = 0) -> Band:
    """Band of np.percentile(values, [25, 50, 75], axis) (NaN propagates)."""
    q1, median, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75], axis=axis)
    return Band(median=median, q1=q1, q3=q3)
