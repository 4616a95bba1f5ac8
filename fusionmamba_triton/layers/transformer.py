"""A Transformer block of the same width as DVSS, for the paper's "DVSS -> Transformer" ablation
(Table 7, case 2). Channels-last (B, h, w, C) in and out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import DropPath, LayerNorm, Linear
from .dvss import Mlp


def num_heads_for(dim: int, head_dim: int = 32) -> int:
    """Heads of width `head_dim` (Swin / VMamba's 32), fewer where `dim` does not divide: 96 -> 3, 16 -> 1."""
    return next(h for h in range(max(1, dim // head_dim), 0, -1) if dim % h == 0)


class GlobalSelfAttention(nn.Module):
    """Multi-head self-attention over all h*w tokens: (B, h, w, C) -> (B, h, w, C).

    `qkv` Linear(C -> 3C, with bias), `proj` Linear(C -> C). Runs through
    F.scaled_dot_product_attention, whose fused kernels (CPU and CUDA) do not store the
    (hw x hw) score matrix, so whole validation images fit; the cost is still quadratic in hw.
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, h, w, c = x.shape
        qkv = self.qkv(x).reshape(batch, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(batch, h, w, c))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block with a convolutional position encoding:

        u = u + pos(u)                                  # depthwise 3x3 conv (CPVT-style)
        v = u + DropPath(attn(norm(u)));  out = v + DropPath(MLP(norm2(v)))

    The paper only says "Transformer". Global attention is the natural reading, since the
    paper's argument for DVSS is global context at linear instead of quadratic cost. The
    network has no position embedding and plain attention is blind to token order, so a
    depthwise-conv position encoding gives the block the spatial information the ESSM gets
    from its own depthwise conv and scan order. Heads of width 32
    (num_heads_for), MLP ratio 4, exact GELU. Same constructor as DVSSBlock (`d_state`
    and `backend` are unused).
    """

    def __init__(self, dim: int, d_state: int = 16, drop_path: float = 0.0, attn_drop: float = 0.0,
                 mlp_ratio: float = 4.0, backend: str = "auto"):
        super().__init__()
        del d_state, backend  # no state-space op in this block
        self.pos = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm = LayerNorm(dim)
        self.attn = GlobalSelfAttention(dim, num_heads_for(dim), attn_drop=attn_drop)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u = u + self.pos(u.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        v = u + self.drop_path(self.attn(self.norm(u)))
        return v + self.drop_path(self.mlp(self.norm2(v)))
