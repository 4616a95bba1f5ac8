"""LDC: the learnable descriptive 3x3 convolution (README, "Design notes") as a module."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import check_backend_name, ldc_conv2d


class LDC(nn.Module):
    """(B, Ci, H, W) -> (B, Co, H, W), a 3x3 convolution whose centre tap is modulated.

    Checkpoint layout: `base_mask` (frozen, a Parameter so it is saved) is registered before
    `learnable_mask` and `learnable_theta`; the weight lives in `conv.weight` (no bias).
    The 3x3 centre indicator is built by the op on the input's device, so it is not saved.
    """

    def __init__(self, in_channels: int, out_channels: int, backend: str = "auto"):
        super().__init__()
        self.base_mask = nn.Parameter(torch.ones(out_channels, in_channels, 3, 3), requires_grad=False)
        self.learnable_mask = nn.Parameter(torch.ones(out_channels, in_channels))
        self.learnable_theta = nn.Parameter(torch.full((1,), 0.5))
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.backend = check_backend_name(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ldc_conv2d(x, self.conv.weight, self.base_mask, self.learnable_mask, self.learnable_theta,
                          backend=self.backend)
