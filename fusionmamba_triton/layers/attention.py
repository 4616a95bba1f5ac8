"""Channel attention gates of the DVSS and DFFM blocks (README, "Design notes").

Both take channels-last tensors (B, h, w, C).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm, Linear


class ECA(nn.Module):
    """Efficient channel attention: x * sigmoid(conv1d_k3(GAP(x)) along the channel axis)."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C) -> the gate (B, 1, 1, C)."""
        pooled = x.mean(dim=(1, 2))  # (B, C)
        g = torch.sigmoid(self.conv(pooled[:, None, :]))  # (B, 1, C)
        return g[:, :, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class BiAttn(nn.Module):
    """Squeeze-excite gate on the layer-normalised global mean; scales the *un-normalised* input.

    gate = sigmoid(channel_select(GELU(global_reduce(mean_hw(norm(x)))))), out = x * gate.
    """

    def __init__(self, channels: int, act_ratio: float = 0.125):
        super().__init__()
        reduced = int(channels * act_ratio)
        self.norm = LayerNorm(channels)
        self.global_reduce = Linear(channels, reduced)
        self.channel_select = Linear(reduced, channels)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C) -> the gate (B, 1, 1, C)."""
        pooled = self.norm(x).mean(dim=(1, 2))
        g = torch.sigmoid(self.channel_select(F.gelu(self.global_reduce(pooled))))
        return g[:, None, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
