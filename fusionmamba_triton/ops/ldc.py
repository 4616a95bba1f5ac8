"""LDC, the learnable descriptive 3x3 convolution of docs/fusionmamba_spec.md §6.

x: (B, Ci, H, W); weight, base_mask: (Co, Ci, 3, 3); learnable_mask: (Co, Ci); theta: (1,).
W' = W * (base_mask - theta * m[..., None, None] * c * sum_uv(W)), c the 3x3 centre indicator;
y = conv2d(x, W', padding=1): (B, Co, H, W).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import resolve_backend


def ldc_modulated_weight(weight, base_mask, learnable_mask, theta):
    """W' of the module docstring: (Co, Ci, 3, 3)."""
    centre = torch.zeros(3, 3, dtype=weight.dtype, device=weight.device)
    centre[1, 1] = 1
    kernel_sum = weight.sum(dim=(2, 3), keepdim=True)
    return weight * (base_mask - theta * learnable_mask[:, :, None, None] * centre * kernel_sum)


def ldc_conv2d_ref(x, weight, base_mask, learnable_mask, theta):
    """Ground truth: modulate the weight, then a plain 3x3 convolution with padding 1."""
    return F.conv2d(x, ldc_modulated_weight(weight, base_mask, learnable_mask, theta), padding=1)


def ldc_conv2d(x, weight, base_mask, learnable_mask, theta, backend="auto"):
    """(B, Ci, H, W) -> (B, Co, H, W)."""
    resolve_backend(backend, x.device)  # TODO(ldc helper): torch/triton paths
    return ldc_conv2d_ref(x, weight, base_mask, learnable_mask, theta)
