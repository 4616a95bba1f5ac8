"""SwinFusion (Ma et al., IEEE/CAA JAS 2022), cost-only, with the released model's settings:
embedding width 60, 6 heads, window 8, MLP ratio 2.

- shallow features: 3x3 conv 1 -> 30, 3x3 conv 30 -> 60 (LeakyReLU 0.2), shared by both sources;
- intra-domain extraction: 4 Swin blocks per source (separate weights);
- inter-domain fusion: 2 layers, each 2 Swin blocks per source then 2 cross-attention Swin
  blocks (queries from one source, keys/values from the other, both directions);
  concat and a 3x3 conv 120 -> 60;
- reconstruction: 4 Swin blocks, then 3x3 convs 60 -> 30 -> 15 -> 1.
Windows alternate between regular and shifted by 4 (with the usual attention mask); inputs are
reflect-padded to a multiple of the window and cropped back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EMBED_DIM = 60
NUM_HEADS = 6
WINDOW = 8
MLP_RATIO = 2.0
EX_DEPTH = 4
FUSION_LAYERS = 2
FUSION_DEPTH = 2
RE_DEPTH = 4


def _windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def _unwindows(x: torch.Tensor, window: int, b: int, h: int, w: int) -> torch.Tensor:
    x = x.view(b, h // window, w // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


def _shift_mask(h: int, w: int, window: int, shift: int, device) -> torch.Tensor:
    """(nW, window², window²) additive mask for shifted windows."""
    region = torch.zeros(1, h, w, 1, device=device)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for ws in cuts:
            region[:, hs, ws, :] = label
            label += 1
    ids = _windows(region, window).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return diff.ne(0).float() * -100.0


class _WindowAttention(nn.Module):
    """Multi-head attention inside windows; queries may come from another source (cross)."""

    def __init__(self, dim: int, heads: int, window: int, cross: bool):
        super().__init__()
        self.heads, self.window, self.cross = heads, window, cross
        self.scale = (dim // heads) ** -0.5
        if cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("bias_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def forward(self, x, context=None, mask=None):
        n_win, n, c = x.shape
        split = lambda t, parts: t.view(n_win, n, parts, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.cross:
            q = split(self.q(x), 1)[0]
            k, v = split(self.kv(context), 2)
        else:
            q, k, v = split(self.qkv(x), 3)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.bias_table[self.bias_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        if mask is not None:
            attn = attn.view(-1, mask.shape[0], self.heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.heads, n, n)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(n_win, n, c)
        return self.proj(out)


class _Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class _SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP on (B, H, W, C); cross=True attends to `context`."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, cross: bool = False):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim) if cross else None
        self.attn = _WindowAttention(dim, heads, window, cross)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, MLP_RATIO)

    def _to_windows(self, x):
        if self.shift:
            x = torch.roll(x, (-self.shift, -self.shift), dims=(1, 2))
        return _windows(x, self.window)

    def forward(self, x, context=None):
        b, h, w, c = x.shape
        mask = _shift_mask(h, w, self.window, self.shift, x.device) if self.shift else None
        ctx = self._to_windows(self.norm_context(context)) if context is not None else None
        out = _unwindows(self.attn(self._to_windows(self.norm1(x)), ctx, mask), self.window, b, h, w)
        if self.shift:
            out = torch.roll(out, (self.shift, self.shift), dims=(1, 2))
        x = x + out
        return x + self.mlp(self.norm2(x))


def _stack(depth: int, dim: int, heads: int, window: int, cross: bool = False) -> nn.ModuleList:
    return nn.ModuleList(_SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, cross) for i in range(depth))


class _FusionLayer(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, depth: int):
        super().__init__()
        self.self_a = _stack(depth, dim, heads, window)
        self.self_b = _stack(depth, dim, heads, window)
        self.cross_a = _stack(depth, dim, heads, window, cross=True)
        self.cross_b = _stack(depth, dim, heads, window, cross=True)

    def forward(self, a, b):
        for blk_a, blk_b in zip(self.self_a, self.self_b):
            a, b = blk_a(a), blk_b(b)
        for blk_a, blk_b in zip(self.cross_a, self.cross_b):
            a, b = blk_a(a, b), blk_b(b, a)
        return a, b


class SwinFusion(nn.Module):
    def __init__(self, dim: int = EMBED_DIM, heads: int = NUM_HEADS, window: int = WINDOW):
        super().__init__()
        self.window = window
        self.conv_first1 = nn.Conv2d(1, dim // 2, 3, padding=1)
        self.conv_first2 = nn.Conv2d(dim // 2, dim, 3, padding=1)
        self.embed_norm = nn.LayerNorm(dim)
        self.extract_a = _stack(EX_DEPTH, dim, heads, window)
        self.extract_b = _stack(EX_DEPTH, dim, heads, window)
        self.norm_a, self.norm_b = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fusion = nn.ModuleList(_FusionLayer(dim, heads, window, FUSION_DEPTH) for _ in range(FUSION_LAYERS))
        self.norm_fa, self.norm_fb = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.conv_fuse = nn.Conv2d(2 * dim, dim, 3, padding=1)
        self.reconstruct = _stack(RE_DEPTH, dim, heads, window)
        self.norm_re = nn.LayerNorm(dim)
        self.conv_last1 = nn.Conv2d(dim, dim // 2, 3, padding=1)
        self.conv_last2 = nn.Conv2d(dim // 2, dim // 4, 3, padding=1)
        self.conv_last3 = nn.Conv2d(dim // 4, 1, 3, padding=1)

    def _shallow(self, x):
        x = F.leaky_relu(self.conv_first1(x), 0.2)
        return self.embed_norm(F.leaky_relu(self.conv_first2(x), 0.2).permute(0, 2, 3, 1))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        h, w = x1.shape[-2:]
        pad = (0, -w % self.window, 0, -h % self.window)
        a, b = self._shallow(F.pad(x1, pad, mode="reflect")), self._shallow(F.pad(x2, pad, mode="reflect"))
        for blk_a, blk_b in zip(self.extract_a, self.extract_b):
            a, b = blk_a(a), blk_b(b)
        a, b = self.norm_a(a), self.norm_b(b)
        for layer in self.fusion:
            a, b = layer(a, b)
        x = torch.cat([self.norm_fa(a), self.norm_fb(b)], dim=-1).permute(0, 3, 1, 2)
        x = F.leaky_relu(self.conv_fuse(x), 0.2).permute(0, 2, 3, 1)
        for blk in self.reconstruct:
            x = blk(x)
        x = self.norm_re(x).permute(0, 3, 1, 2)
        x = F.leaky_relu(self.conv_last1(x), 0.2)
        x = F.leaky_relu(self.conv_last2(x), 0.2)
        return self.conv_last3(x)[..., :h, :w]
