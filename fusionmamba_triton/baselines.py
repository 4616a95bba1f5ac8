"""Classical fusion rules to compare against: pixel average, pixel maximum and Laplacian pyramid.

Each is a function fuser(a, b, *, colour_source="auto") with the same image conventions as
fusionmamba_triton.inference.fuse: it fuses the Y channel and keeps the colour source's Cb/Cr.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .inference import fuse_luma

# Burt & Adelson's 5-tap binomial filter.
_KERNEL_1D = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16.0


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable 5x5 binomial blur of (1, 1, H, W) with edge replication."""
    k = _KERNEL_1D.to(x)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5))
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1))


def _upsample(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-insertion upsampling to (height, width) followed by the blur, scaled to keep the mean."""
    up = x.new_zeros(x.shape[:2] + (height, width))
    up[..., ::2, ::2] = x
    return _blur(up) * 4.0


def laplacian_pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels (finest first) and the low-pass base (last) of a (1, 1, H, W) image."""
    pyramid, current = [], image
    for _ in range(levels):
        if min(current.shape[-2:]) < 2:
            break
        smaller = _blur(current)[..., ::2, ::2]
        pyramid.append(current - _upsample(smaller, *current.shape[-2:]))
        current = smaller
    pyramid.append(current)
    return pyramid


def collapse_pyramid(pyramid: list[torch.Tensor]) -> torch.Tensor:
    image = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        image = band + _upsample(image, *band.shape[-2:])
    return image


def laplacian_fuse_luma(ya: np.ndarray, yb: np.ndarray, levels: int = 4) -> np.ndarray:
    """Laplacian-pyramid fusion of two grey images: larger magnitude on band-pass levels, mean on the base."""
    pa = laplacian_pyramid(torch.from_numpy(ya).double()[None, None], levels)
    pb = laplacian_pyramid(torch.from_numpy(yb).double()[None, None], levels)
    fused = [torch.where(da.abs() >= db.abs(), da, db) for da, db in zip(pa[:-1], pb[:-1])]
    fused.append(0.5 * (pa[-1] + pb[-1]))
    return collapse_pyramid(fused)[0, 0].numpy().astype(np.float32)


def average_fuse_luma(ya: np.ndarray, yb: np.ndarray) -> np.ndarray:
    return 0.5 * (ya + yb)


def max_fuse_luma(ya: np.ndarray, yb: np.ndarray) -> np.ndarray:
    return np.maximum(ya, yb)


LUMA_RULES = {"average": average_fuse_luma, "max": max_fuse_luma, "laplacian": laplacian_fuse_luma}
BASELINES = tuple(LUMA_RULES)


def _fuse_with_rule(rule, a, b, *, colour_source: str = "auto") -> np.ndarray:
    return fuse_luma(rule, a, b, colour_source)


def get_fuser(name: str):
    """The baseline `name` ("average", "max" or "laplacian") as fuser(a, b, *, colour_source="auto") -> image."""
    if name not in LUMA_RULES:
        raise ValueError(f"unknown fusion method {name!r}; choose from {BASELINES}")
    return functools.partial(_fuse_with_rule, LUMA_RULES[name])
