"""Shared test set-up: torch threads for the 2 CI cores (override: COHERENCE_TORCH_THREADS=1
when other jobs share the machine; spinning OpenMP threads slow down badly when oversubscribed).
"""

from __future__ import annotations

import os

import torch

torch.set_num_threads(int(os.environ.get("COHERENCE_TORCH_THREADS", "2")))
