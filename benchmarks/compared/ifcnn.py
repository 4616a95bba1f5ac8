"""IFCNN (Zhang et al., Information Fusion 2020), cost-only, elementwise-max fusion rule.

Each source (grey replicated to 3 channels, as the official code feeds it) goes through CONV1,
the 7x7 64-channel first layer of ResNet-101 used with stride 1 and replicate padding, and CONV2
(3x3, 64, BN, ReLU); the two feature maps are fused by an elementwise maximum; CONV3 (3x3, 64,
BN, ReLU) and CONV4 (1x1, 64 -> 3) reconstruct the image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WIDTH = 64


class _ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))))


class IFCNN(nn.Module):
    def __init__(self, width: int = WIDTH):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, bias=False)
        self.conv2 = _ConvBNReLU(width, width)
        self.conv3 = _ConvBNReLU(width, width)
        self.conv4 = nn.Conv2d(width, 3, 1)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return self.conv2(self.conv1(F.pad(x, (3, 3, 3, 3), mode="replicate")))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        fused = torch.maximum(self._features(x1), self._features(x2))
        return self.conv4(self.conv3(fused))
