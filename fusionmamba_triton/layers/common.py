"""Small pieces shared by the layers: stochastic depth."""
from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: during training, zero whole samples with probability `drop_prob`
    and scale the kept ones by 1 / (1 - drop_prob). Identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def sample_scale(self, x: torch.Tensor) -> torch.Tensor | None:
        """The per-sample factor (B, 1, ..., 1) for a batch like `x` (0 or 1 / keep), None when inactive."""
        if self.drop_prob == 0.0 or not self.training:
            return None
        keep = 1.0 - self.drop_prob
        return x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep).div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.sample_scale(x)
        return x if scale is None else x * scale

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
