"""U2Fusion generator (Xu et al., TPAMI 2020), cost-only.

The two sources are concatenated (2 channels), then a DenseNet-style encoder: one 3x3 conv to 44
channels and five densely connected 3x3 convs of growth 44 (each output is concatenated to its
input, ending at 6*44 = 264 channels), then a plain decoder 264 -> 128 -> 64 -> 32 -> 1.
All convolutions are 3x3 with reflect padding and bias; LeakyReLU(0.2), tanh at the end.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROWTH = 44
DENSE_LAYERS = 5
DECODER_WIDTHS = (128, 64, 32, 1)


class _ReflectConv(nn.Conv2d):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, kernel_size=3)

    def forward(self, x):
        return super().forward(F.pad(x, (1, 1, 1, 1), mode="reflect"))


class U2Fusion(nn.Module):
    def __init__(self, growth: int = GROWTH, dense_layers: int = DENSE_LAYERS):
        super().__init__()
        self.stem = _ReflectConv(2, growth)
        self.dense = nn.ModuleList(_ReflectConv(growth * (i + 1), growth) for i in range(dense_layers))
        widths = (growth * (dense_layers + 1),) + DECODER_WIDTHS
        self.decoder = nn.ModuleList(_ReflectConv(cin, cout) for cin, cout in zip(widths[:-1], widths[1:]))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.stem(torch.cat([x1, x2], dim=1)), 0.2)
        for conv in self.dense:
            x = torch.cat([F.leaky_relu(conv(x), 0.2), x], dim=1)
        for conv in self.decoder[:-1]:
            x = F.leaky_relu(conv(x), 0.2)
        return torch.tanh(self.decoder[-1](x)) / 2 + 0.5
