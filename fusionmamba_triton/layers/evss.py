"""EVSS block (EfficientVMamba's efficient visual state-space block) for the paper's "DVSS -> EVSS"
ablation (Table 7, case 1). Channels-last (B, h, w, C) in and out.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import BiAttn
from .common import DropPath, LayerNorm
from .dvss import Mlp
from .essm import SS2D


class EVSSBlock(nn.Module):
    """The block DVSS was derived from: a global and a local branch side by side on the same input.

        a = norm(u);  s = ESSM(a);  c = conv_branch(a)
        v = u + DropPath(BiAttn(s) + BiAttn(c));  out = v + DropPath(MLP(norm2(v)))

    conv_branch is EfficientVMamba's local path: depthwise 3x3 conv -> BatchNorm -> GELU ->
    pointwise 1x1 conv. Compared with DVSS there is no ECA and no LDC, and the local branch reads
    the normalised input rather than the ESSM output. ESSM is the same ES2D SS2D as in DVSS, and
    one BiAttn gate is shared by both branches as in both papers' code. Same constructor as
    DVSSBlock, so a DVSSLayer can build either.
    """

    def __init__(self, dim: int, d_state: int = 16, drop_path: float = 0.0, attn_drop: float = 0.0,
                 mlp_ratio: float = 4.0, backend: str = "auto"):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.op = SS2D(dim, d_state=d_state, dropout=attn_drop, backend=backend)
        self.conv_branch = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, kernel_size=1),
        )
        self.se = BiAttn(dim)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        a = self.norm(u)
        s = self.op(a)
        c = self.conv_branch(a.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        v = u + self.drop_path(self.se(s) + self.se(c))
        return v + self.drop_path(self.mlp(self.norm2(v)))
