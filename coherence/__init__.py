"""Coherence Explorer: influence diagnostics for autoregressive PDE surrogates."""

from __future__ import annotations

__version__ = "0.1.0"
