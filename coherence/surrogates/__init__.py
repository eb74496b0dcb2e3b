"""UNet and ViT surrogates, training, checkpoints and rollouts (stage 2: train)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from coherence.surrogates.checkpoint import CheckpointConfig


def load(
    path: str | os.PathLike, *, trust_code: bool = False, device: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointConfig]:
    """``surrogates.load(path) -> (model, config)`` (ARCHITECTURE.md): the checkpoint loader,
    ``checkpoint.load``. Imported on first call, so importing a submodule stays light."""
    from coherence.surrogates.checkpoint import load as load_checkpoint

    return load_checkpoint(path, trust_code=trust_code, device=device)
