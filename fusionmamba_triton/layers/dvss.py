"""DVSS block (official `VSSBlock_new`; README, "Design notes") and a stage of them."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import ECA, BiAttn
from .common import DropPath, LayerNorm, Linear
from .essm import SS2D
from .ldc import LDC
from .patch import PatchExpand, PatchMerging


class Mlp(nn.Module):
    """fc1 (C -> hidden) -> exact GELU -> fc2 (hidden -> C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x, activation="gelu"))


class DVSSBlock(nn.Module):
    """(B, h, w, C) -> (B, h, w, C).

        s = ESSM(norm(u));  c = LDC(s + ECA(s));  v = u + DropPath(BiAttn(s) + BiAttn(c))
        out = v + DropPath(MLP(norm2(v)))

    Attribute names are the checkpoint's (`op` is the ESSM, `se` the BiAttn applied twice,
    `self_attention_cross_channel` the ECA, `conv_branch` the LDC).
    """

    def __init__(self, dim: int, d_state: int = 16, drop_path: float = 0.0, attn_drop: float = 0.0,
                 mlp_ratio: float = 4.0, backend: str = "auto"):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.op = SS2D(dim, d_state=d_state, dropout=attn_drop, backend=backend)
        self.conv_branch = LDC(dim, dim, backend=backend)
        self.self_attention_cross_channel = ECA()
        self.se = BiAttn(dim)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s = self.op(self.norm(u))
        t = s * (1.0 + self.self_attention_cross_channel.gate(s))  # s + ECA(s)
        # channels-last -> (B, C, h, w) view with channels_last strides: no copy for the conv.
        c = self.conv_branch(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        g_s, g_c = self.se.gate(s), self.se.gate(c)  # BiAttn(x) = x * gate(x)
        scale = self.drop_path.sample_scale(u)  # stochastic depth folded into the gates
        if scale is not None:
            g_s, g_c = g_s * scale, g_c * scale
        v = torch.addcmul(torch.addcmul(u, s, g_s), c, g_c)
        m = self.mlp(self.norm2(v))
        scale = self.drop_path.sample_scale(u)
        return v + m if scale is None else torch.addcmul(v, m, scale)


class DVSSLayer(nn.Module):
    """An encoder stage (`blocks`, then optional `downsample`) or a decoder stage
    (optional `upsample`, then `blocks`). `block` is the block class (DVSSBlock, or an ablation's
    replacement with the same constructor)."""

    def __init__(self, dim: int, depth: int, drop_path: list[float], d_state: int = 16,
                 attn_drop: float = 0.0, downsample: bool = False, upsample: bool = False,
                 use_checkpoint: bool = False, backend: str = "auto", block: type = DVSSBlock):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            block(dim, d_state=d_state, drop_path=drop_path[i], attn_drop=attn_drop, backend=backend)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self.upsample = PatchExpand(dim) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x
