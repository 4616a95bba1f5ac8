"""IFT, the Image Fusion Transformer (Vs et al., ICIP 2022), cost-only.

An RFN-Nest auto-encoder with a spatio-transformer fusion block at each of its 4 scales:
- encoder (shared by both sources): 1x1 conv 1 -> 16, then four light dense blocks
  (3x3 conv C_in -> C_in/2, 1x1 conv -> C_out) to widths 64, 112, 160, 208, 2x2 max-pool between;
- fusion block at width C: a spatial branch (1x1 conv on each source, concat, 1x1 2C -> C,
  two 3x3 C -> C) plus a transformer branch (an axial-attention block, C -> C/2 -> height
  attention -> width attention -> C, one head, relative position terms on q, k and v, on each
  source; concat; 1x1 2C -> C), summed;
- nest decoder (RFN-Nest eval path, no deep supervision) and a 1x1 conv to 1 channel.
Convolutions use reflect padding and ReLU. The relative position tables are sized to the
feature map (the official code fixes them for 256x256 inputs); build with `img_size`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (64, 112, 160, 208)
STEM_WIDTH = 16


class _ConvReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.pad = kernel // 2
        self.conv = nn.Conv2d(cin, cout, kernel)

    def forward(self, x):
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="reflect")
        return F.relu(self.conv(x))


def _light_dense_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_ConvReLU(cin, cin // 2, 3), _ConvReLU(cin // 2, cout, 1))


class _AxialAttention(nn.Module):
    """Single-head attention along one axis of (B, C, H, W), with relative position terms."""

    def __init__(self, width: int, length: int, along_width: bool):
        super().__init__()
        self.width, self.length, self.along_width = width, length, along_width
        self.qkv = nn.Conv1d(width, 2 * width, 1, bias=False)
        self.bn_qkv = nn.BatchNorm1d(2 * width)
        self.bn_similarity = nn.BatchNorm2d(3)
        self.bn_output = nn.BatchNorm1d(2 * width)
        self.relative = nn.Parameter(torch.randn(2 * width, 2 * length - 1) * width ** -0.5)
        idx = torch.arange(length)
        self.register_buffer("rel_index", (idx[:, None] - idx[None, :] + length - 1).reshape(-1), persistent=False)

    def forward(self, x):
        b, c, h, w = x.shape
        seq = x.permute(0, 2, 1, 3) if self.along_width else x.permute(0, 3, 1, 2)  # (B, other, C, len)
        n_other, length = seq.shape[1], seq.shape[3]
        seq = seq.reshape(b * n_other, c, length)
        q, k, v = self.bn_qkv(self.qkv(seq)).split([c // 2, c // 2, c], dim=1)
        emb = self.relative.index_select(1, self.rel_index).view(2 * c, length, length)
        q_emb, k_emb, v_emb = emb.split([c // 2, c // 2, c], dim=0)
        qr = torch.einsum("nci,cij->nij", q, q_emb)
        kr = torch.einsum("nci,cij->nij", k, k_emb).transpose(1, 2)
        qk = torch.einsum("nci,ncj->nij", q, k)
        sim = self.bn_similarity(torch.stack([qk, qr, kr], dim=1)).sum(dim=1).softmax(dim=-1)
        sv = torch.einsum("nij,ncj->nci", sim, v)
        sve = torch.einsum("nij,cij->nci", sim, v_emb)
        out = self.bn_output(torch.cat([sv, sve], dim=1)).view(b * n_other, 2, c, length).sum(dim=1)
        out = out.view(b, n_other, c, length)
        return out.permute(0, 2, 1, 3) if self.along_width else out.permute(0, 2, 3, 1)


class _AxialBlock(nn.Module):
    def __init__(self, channels: int, size: tuple[int, int]):
        super().__init__()
        width = channels // 2
        self.down = nn.Sequential(nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.height_attn = _AxialAttention(width, size[0], along_width=False)
        self.width_attn = _AxialAttention(width, size[1], along_width=True)
        self.up = nn.Sequential(nn.Conv2d(width, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        out = F.relu(self.width_attn(self.height_attn(self.down(x))))
        return F.relu(self.up(out) + x)


class _SpatioTransformerFusion(nn.Module):
    def __init__(self, channels: int, size: tuple[int, int]):
        super().__init__()
        self.axial = _AxialBlock(channels, size)
        self.axial_fuse = _ConvReLU(2 * channels, channels, 1)
        self.conv_each = _ConvReLU(channels, channels, 1)
        self.conv_fuse = nn.Sequential(
            _ConvReLU(2 * channels, channels, 1), _ConvReLU(channels, channels, 3), _ConvReLU(channels, channels, 3)
        )

    def forward(self, a, b):
        transformer = self.axial_fuse(torch.cat([self.axial(a), self.axial(b)], dim=1))
        spatial = self.conv_fuse(torch.cat([self.conv_each(b), self.conv_each(a)], dim=1))
        return transformer + spatial


class IFT(nn.Module):
    def __init__(self, img_size: tuple[int, int] = (256, 256), widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        h, w = img_size
        c0, c1, c2, c3 = widths
        self.stem = _ConvReLU(1, STEM_WIDTH, 1)
        self.encoder = nn.ModuleList(
            _light_dense_block(cin, cout) for cin, cout in zip((STEM_WIDTH,) + tuple(widths[:-1]), widths)
        )
        sizes = [(h, w)]
        for _ in range(3):
            sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
        self.fusion = nn.ModuleList(_SpatioTransformerFusion(c, s) for c, s in zip(widths, sizes))
        self.db1_1 = _light_dense_block(c0 + c1, c0)
        self.db2_1 = _light_dense_block(c1 + c2, c1)
        self.db3_1 = _light_dense_block(c2 + c3, c2)
        self.db1_2 = _light_dense_block(2 * c0 + c1, c0)
        self.db2_2 = _light_dense_block(2 * c1 + c2, c1)
        self.db1_3 = _light_dense_block(3 * c0 + c1, c0)
        self.out = _ConvReLU(c0, 1, 1)

    def _encode(self, x):
        feats = []
        x = self.stem(x)
        for i, block in enumerate(self.encoder):
            x = block(F.max_pool2d(x, 2) if i else x)
            feats.append(x)
        return feats

    @staticmethod
    def _up(small, like):
        return F.interpolate(small, size=like.shape[-2:], mode="nearest")

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        f0, f1, f2, f3 = [fuse(a, b) for fuse, a, b in zip(self.fusion, self._encode(x1), self._encode(x2))]
        x1_1 = self.db1_1(torch.cat([f0, self._up(f1, f0)], 1))
        x2_1 = self.db2_1(torch.cat([f1, self._up(f2, f1)], 1))
        x1_2 = self.db1_2(torch.cat([f0, x1_1, self._up(x2_1, f0)], 1))
        x3_1 = self.db3_1(torch.cat([f2, self._up(f3, f2)], 1))
        x2_2 = self.db2_2(torch.cat([f1, x2_1, self._up(x3_1, f1)], 1))
        x1_3 = self.db1_3(torch.cat([f0, x1_1, x1_2, self._up(x2_2, f0)], 1))
        return self.out(x1_3)
