"""Periodic UNet surrogate (METHOD.md §3): residual encoder/decoder with bottleneck attention.

Layout for n_down stages with widths w_i = base_width · channel_mult[i], i = 0..n_down:

    in conv F → w_0
    encoder stage i < n_down: blocks_per_stage ResBlocks at w_i, keep a skip, stride-2 conv
    bottleneck (L / 2^n_down)²: ResBlock, multi-head self-attention, ResBlock at w_n
    decoder stage i = n_down−1..0: nearest ×2 + conv to w_i, concat skip (2·w_i),
                                   blocks_per_stage ResBlocks back to w_i
    out: GroupNorm, SiLU, conv w_0 → F

Every convolution pads circularly and attention has no positional embedding, so the network
commutes with periodic shifts by multiples of 2^n_down (the stride-2 convolutions only see
the grid modulo 2^n_down). GroupNorm, never BatchNorm: influence needs each example's output
to depend on that example alone. Cost: O(L² · Σ_i w_i² / 4^i) per sample for the convolutions
plus O(T² · w_n) for attention over T = (L / 2^n_down)² tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coherence.errors import RequestError
from coherence.surrogates.config import config_from_dict, require_int
from coherence.surrogates.normalization import NormalizedSurrogate
from coherence.surrogates.vit import MultiHeadSelfAttention


def circular_conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    """A 'same' convolution on the periodic grid (output size = input size / stride)."""
    return nn.Conv2d(
        c_in, c_out, kernel, stride=stride, padding=kernel // 2, padding_mode="circular"
    )


class ResBlock(nn.Module):
    """x ↦ skip(x) + conv(SiLU(GN(conv(SiLU(GN(x)))))), skip a 1×1 conv when widths differ."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = circular_conv(c_in, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = circular_conv(c_out, c_out)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """x + MHSA(GN(x)) over the H·W bottleneck pixels as tokens (translation-equivariant)."""

    def __init__(self, width: int, heads: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, width)
        self.attn = MultiHeadSelfAttention(width, heads)

    def forward(self, x: Tensor) -> Tensor:
        batch, width, height, breadth = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, H·W, C)
        out = self.attn(tokens).transpose(1, 2)  # (B, C, H·W)
        return x + out.reshape(batch, width, height, breadth)  # (B, C, H, W)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a circular 3×3 conv (no transposed-conv checkerboard)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = circular_conv(c_in, c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))  # (B, C, 2H, 2W)


@dataclass(frozen=True)
class UNetConfig:
    """Sizes of a UNet surrogate; grids must be divisible by 2**n_down."""

    channels: int  # F, state channels in and out
    base_width: int = 24  # width of the full-resolution stage
    n_down: int = 4  # stride-2 stages; downsampling factor 2**n_down
    channel_mult: tuple[int, ...] = (1, 2, 4, 8, 8)  # width multipliers, n_down + 1 of them
    blocks_per_stage: int = 2  # ResBlocks per encoder and per decoder stage
    attention_heads: int = 8  # heads of the bottleneck attention; must divide its width
    groups: int = 8  # GroupNorm groups; must divide every stage width

    def __post_init__(self) -> None:
        for name in ("channels", "base_width", "n_down", "blocks_per_stage", "groups"):
            require_int("UNetConfig", name, getattr(self, name), 1)
        require_int("UNetConfig", "attention_heads", self.attention_heads, 1)
        mult = self.channel_mult
        if not isinstance(mult, tuple | list) or len(mult) != self.n_down + 1:
            raise RequestError(
                f"UNetConfig.channel_mult = {mult!r}; it must list n_down + 1 = "
                f"{self.n_down + 1} integers (one width multiplier per resolution level)"
            )
        for m in mult:
            if isinstance(m, bool) or not isinstance(m, int) or m < 1:
                raise RequestError(
                    f"UNetConfig.channel_mult = {list(mult)} holds {m!r}; multipliers must "
                    "be integers ≥ 1"
                )
        object.__setattr__(self, "channel_mult", tuple(mult))
        bad = [w for w in self.widths if w % self.groups]
        if bad:
            raise RequestError(
                f"UNetConfig.groups = {self.groups} does not divide stage widths {bad}; "
                f"choose groups dividing every width in {list(self.widths)}"
            )
        if self.widths[-1] % self.attention_heads:
            raise RequestError(
                f"UNetConfig.attention_heads = {self.attention_heads} does not divide the "
                f"bottleneck width {self.widths[-1]}; choose a divisor of it"
            )

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_width * m for m in self.channel_mult)

    @property
    def downsampling(self) -> int:
        return 2**self.n_down

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["channel_mult"] = list(self.channel_mult)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        return config_from_dict(cls, data)


class UNet(NormalizedSurrogate):
    """Direct next-state UNet: physical (B, F, H, W) → physical (B, F, H, W)."""

    arch_name = "unet"

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config.channels)
        self.config = config
        widths, groups, blocks = config.widths, config.groups, config.blocks_per_stage
        self.inp = circular_conv(config.channels, widths[0])
        self.encoder = nn.ModuleList(
            nn.Sequential(*(ResBlock(w, w, groups) for _ in range(blocks))) for w in widths[:-1]
        )
        self.down = nn.ModuleList(
            circular_conv(widths[i], widths[i + 1], stride=2) for i in range(config.n_down)
        )
        bottom = widths[-1]
        self.middle = nn.Sequential(
            ResBlock(bottom, bottom, groups),
            AttentionBlock(bottom, config.attention_heads, groups),
            ResBlock(bottom, bottom, groups),
        )
        self.up = nn.ModuleList(Upsample(widths[i + 1], widths[i]) for i in range(config.n_down))
        self.decoder = nn.ModuleList(
            nn.Sequential(
                ResBlock(2 * w, w, groups), *(ResBlock(w, w, groups) for _ in range(blocks - 1))
            )
            for w in widths[:-1]
        )
        self.out = nn.Sequential(
            nn.GroupNorm(groups, widths[0]), nn.SiLU(), circular_conv(widths[0], config.channels)
        )

    def check_spatial(self, height: int, width: int) -> None:
        factor = self.config.downsampling
        if height % factor or width % factor:
            raise RequestError(
                f"UNet with n_down = {self.config.n_down} needs grid sides divisible by "
                f"{factor}; got {height}×{width}: resample the data to a multiple of {factor} (or, "
                "from Python, build the UNet with a smaller n_down)"
            )

    def forward_normalized(self, z: Tensor) -> Tensor:
        h = self.inp(z)  # (B, w_0, H, W)
        skips = []
        for stage, down in zip(self.encoder, self.down, strict=True):
            h = stage(h)  # (B, w_i, H / 2^i, W / 2^i)
            skips.append(h)
            h = down(h)  # (B, w_{i+1}, H / 2^{i+1}, W / 2^{i+1})
        h = self.middle(h)  # (B, w_n, H / 2^n, W / 2^n)
        for i in reversed(range(self.config.n_down)):
            h = self.up[i](h)  # (B, w_i, H / 2^i, W / 2^i)
            h = self.decoder[i](torch.cat([h, skips[i]], dim=1))  # (B, w_i, H / 2^i, W / 2^i)
        return self.out(h)  # (B, F, H, W)
