"""Vision-transformer surrogate (METHOD.md §3): patch embedding, transformer, un-patchify.

Paper configuration: 5×5 circular conv embedding with stride 4 (1024 tokens at 128²),
learned positional embedding, 8 pre-norm blocks of width 256 with 8 heads and MLP ratio 2,
a linear head back to 4×4×F pixels per token: ≈ 4.5M parameters at F = 4.

Attention is written out (softmax(q kᵀ/√d) v) instead of calling
``scaled_dot_product_attention``: the CPU flash kernel has no forward-mode AD rule in
torch 2.13, and influence estimators need ``jvp``. Cost per block: O(T²·width) for attention
plus O(T·width²·(4 + 2·mlp_ratio)) for the projections, T = (resolution / patch)² tokens.
The positional embedding breaks translation equivariance on purpose (as in the paper).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from coherence.errors import RequestError
from coherence.surrogates.config import config_from_dict, require_int
from coherence.surrogates.normalization import NormalizedSurrogate


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ / √d) v over the token axis; q, k, v are (B, heads, T, d)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, heads, T, T)
    return scores.softmax(dim=-1) @ v  # (B, heads, T, d)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention over tokens (B, T, width); no mask, no dropout."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, tokens: Tensor) -> Tensor:
        batch, count, width = tokens.shape
        head_dim = width // self.heads
        qkv = self.qkv(tokens)  # (B, T, 3·width)
        qkv = qkv.reshape(batch, count, 3, self.heads, head_dim)  # (B, T, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, d)
        out = attention(q, k, v)  # (B, heads, T, d)
        out = out.transpose(1, 2).reshape(batch, count, width)  # (B, T, width)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm block: t + MHSA(LN(t)), then t + MLP(LN(t)) with a SiLU MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = round(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width)
        self.attn = MultiHeadSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, width))

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = tokens + self.attn(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


@dataclass(frozen=True)
class ViTConfig:
    """Sizes of a ViT surrogate; the token grid is (resolution / patch)²."""

    channels: int  # F, state channels in and out
    resolution: int  # L, the square grid the positional embedding is sized for
    patch: int = 4  # P, pixels per token side; embedding kernel 2·⌊P/2⌋+1, stride P
    width: int = 256  # token width
    depth: int = 8  # transformer blocks
    heads: int = 8  # attention heads; must divide width
    mlp_ratio: float = 2.0  # MLP hidden width / token width

    def __post_init__(self) -> None:
        for name, minimum in (("channels", 1), ("resolution", 1), ("patch", 1), ("width", 1)):
            require_int("ViTConfig", name, getattr(self, name), minimum)
        require_int("ViTConfig", "depth", self.depth, 0)
        require_int("ViTConfig", "heads", self.heads, 1)
        if self.resolution % self.patch:
            raise RequestError(
                f"ViTConfig.resolution = {self.resolution} is not divisible by patch = "
                f"{self.patch}; choose a resolution that is a multiple of the patch size"
            )
        if self.width % self.heads:
            raise RequestError(
                f"ViTConfig.heads = {self.heads} does not divide width = {self.width}; "
                f"choose heads among the divisors of {self.width}"
            )
        ratio = self.mlp_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not ratio > 0:
            raise RequestError(f"ViTConfig.mlp_ratio = {ratio!r}; it must be a number > 0")
        object.__setattr__(self, "mlp_ratio", float(ratio))

    @property
    def tokens_per_side(self) -> int:
        return self.resolution // self.patch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        return config_from_dict(cls, data)


class ViT(NormalizedSurrogate):
    """Direct next-state ViT: physical (B, F, L, L) → physical (B, F, L, L)."""

    arch_name = "vit"

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config.channels)
        self.config = config
        p, w = config.patch, config.width
        # Centred overlapping patches: kernel 2⌊P/2⌋+1 with circular padding ⌊P/2⌋ and stride P
        # gives exactly L/P tokens per side (paper: 5×5, stride 4, padding 2).
        self.embed = nn.Conv2d(
            config.channels, w, 2 * (p // 2) + 1, stride=p, padding=p // 2,
            padding_mode="circular",
        )  # fmt: skip
        self.position = nn.Parameter(torch.zeros(1, config.tokens_per_side**2, w))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(w, config.heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(w)
        self.head = nn.Linear(w, p * p * config.channels)

    def check_spatial(self, height: int, width: int) -> None:
        size = self.config.resolution
        if height != width:
            raise RequestError(
                f"ViT built for {size}×{size} got a {height}×{width} grid (height × width); a "
                "ViT needs a square grid: use a UNet (`--arch unet`) on these data, or "
                "resample them to a square grid"
            )
        if (height, width) != (size, size):
            raise RequestError(
                f"ViT built for {size}×{size} got a {height}×{width} grid; its positional "
                f"embedding fixes the resolution: use data on the {size}×{size} grid, or train "
                "a ViT on this data (`coherence train --arch vit` sizes it to the data's grid)"
            )

    def forward_normalized(self, z: Tensor) -> Tensor:
        batch, channels = z.shape[0], self.config.channels
        n, p = self.config.tokens_per_side, self.config.patch
        tokens = self.embed(z)  # (B, width, n, n)
        tokens = tokens.flatten(2).transpose(1, 2) + self.position  # (B, n·n, width)
        for block in self.blocks:
            tokens = block(tokens)  # (B, n·n, width)
        pixels = self.head(self.norm(tokens))  # (B, n·n, F·P·P)
        pixels = pixels.reshape(batch, n, n, channels, p, p)  # (B, n_y, n_x, F, P_y, P_x)
        pixels = pixels.permute(0, 3, 1, 4, 2, 5)  # (B, F, n_y, P_y, n_x, P_x)
        return pixels.reshape(batch, channels, n * p, n * p)  # (B, F, L, L)
