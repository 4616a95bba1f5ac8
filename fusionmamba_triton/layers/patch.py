"""Patch embedding, merging (2x down) and expanding (2x / 4x up), channels-last (B, h, w, C)."""
from __future__ import annotations

import torch
from torch import nn

from .common import LayerNorm, Linear


class PatchEmbed(nn.Module):
    """(B, in_chans, H, W) -> (B, H/p, W/p, dim): a p x p stride-p convolution, then LayerNorm."""

    def __init__(self, patch_size: int = 4, in_chans: int = 1, dim: int = 96):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """(B, h, w, C) -> (B, h/2, w/2, 2C): concatenate the four parity sub-grids in the order
    (even row, even col), (odd, even), (even, odd), (odd, odd), LayerNorm(4C), Linear(4C -> 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        # `reduction` before `norm`: the checkpoint's key order.
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)
        self.norm = LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, h, w, c = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"patch merging needs an even feature map, got {h}x{w}")
        # (B, h/2, row parity, w/2, col parity, C) -> (B, h/2, w/2, col parity, row parity, C):
        # the concatenation index col_parity * 2 + row_parity gives the order above.
        x = x.reshape(batch, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(batch, h // 2, w // 2, 4 * c)
        return self.reduction(self.norm(x))


def pixel_shuffle_channels_last(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, h, w, s*s*c) -> (B, h*s, w*s, c), channels split as (s_row, s_col, c)."""
    batch, h, w, channels = x.shape
    c = channels // (scale * scale)
    x = x.reshape(batch, h, w, scale, scale, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, h * scale, w * scale, c)


class PatchExpand(nn.Module):
    """(B, h, w, 2d) -> (B, 2h, 2w, d): Linear(2d -> 4d, no bias), pixel shuffle, LayerNorm(d)."""

    def __init__(self, dim: int):
        super().__init__()
        self.expand = Linear(2 * dim, 4 * dim, bias=False)
        self.norm = LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_channels_last(self.expand(x), 2))


class FinalPatchExpand(nn.Module):
    """(B, h, w, d) -> (B, 4h, 4w, d/4): Linear(d -> 4d, no bias), 4x pixel shuffle, LayerNorm(d/4)."""

    def __init__(self, dim: int, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.expand = Linear(dim, scale * dim, bias=False)
        self.norm = LayerNorm(dim // scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_channels_last(self.expand(x), self.scale))
