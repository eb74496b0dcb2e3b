"""Shared test set-up: keep torch on the 2 CI cores and deterministic."""

from __future__ import annotations

import torch

torch.set_num_threads(2)
torch.use_deterministic_algorithms(False)
