"""ES2D skip-sampled 2D scan (gather) and its inverse (merge), docs/fusionmamba_spec.md §3.

es2d_scan:  x (B, D, H, W) -> (B, 4, D, L'), L' = ceil(H/2) * ceil(W/2); odd H/W are zero-padded.
es2d_merge: y (B, 4, D, L') -> (B, D, H, W), writing each group back to its sub-grid and cropping.
Groups: k0 (even row, even col) row-major, k1 (odd, even) column-major,
        k2 (even, odd) row-major,           k3 (odd, odd) column-major.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import resolve_backend

# (row parity, column parity, column-major?) for the four groups, in group order.
GROUPS = ((0, 0, False), (1, 0, True), (0, 1, False), (1, 1, True))


def _check_step(step: int) -> None:
    if step != 2:
        raise ValueError(f"only step=2 (the official ES2D) is supported, got step={step}")


def es2d_scan_ref(x: torch.Tensor, step: int = 2) -> torch.Tensor:
    """Ground truth gather: pad to even H/W, take the 4 parity sub-grids, flatten each in its order."""
    _check_step(step)
    if x.dim() != 4:
        raise ValueError(f"x must be (B, D, H, W), got shape {tuple(x.shape)}")
    batch, dim, height, width = x.shape
    x = F.pad(x, (0, width % 2, 0, height % 2))
    seqs = []
    for row, col, column_major in GROUPS:
        sub = x[:, :, row::2, col::2]
        if column_major:
            sub = sub.transpose(2, 3)
        seqs.append(sub.reshape(batch, dim, -1))
    return torch.stack(seqs, dim=1)


def es2d_merge_ref(y: torch.Tensor, H: int, W: int, step: int = 2) -> torch.Tensor:
    """Ground truth merge: scatter each group back to its parity sub-grid, crop to (H, W)."""
    _check_step(step)
    h2, w2 = (H + 1) // 2, (W + 1) // 2
    if y.dim() != 4 or y.shape[1] != 4 or y.shape[3] != h2 * w2:
        raise ValueError(f"y must be (B, 4, D, {h2 * w2}) for H={H}, W={W}, got shape {tuple(y.shape)}")
    batch, _, dim, _ = y.shape
    out = y.new_zeros(batch, dim, 2 * h2, 2 * w2)
    for k, (row, col, column_major) in enumerate(GROUPS):
        sub = y[:, k].reshape(batch, dim, w2, h2).transpose(2, 3) if column_major else y[:, k].reshape(batch, dim, h2, w2)
        out[:, :, row::2, col::2] = sub
    return out[:, :, :H, :W]


def es2d_scan(x: torch.Tensor, step: int = 2, backend: str = "auto") -> torch.Tensor:
    """(B, D, H, W) -> (B, 4, D, L')."""
    resolve_backend(backend, x.device)  # TODO(es2d helper): torch/triton paths
    return es2d_scan_ref(x, step)


def es2d_merge(y: torch.Tensor, H: int, W: int, step: int = 2, backend: str = "auto") -> torch.Tensor:
    """(B, 4, D, L') -> (B, D, H, W)."""
    resolve_backend(backend, y.device)
    return es2d_merge_ref(y, H, W, step)
