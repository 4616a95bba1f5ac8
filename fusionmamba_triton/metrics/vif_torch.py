"""Differentiable pixel-domain multiscale VIF (Sheikh & Bovik's vifp_mscale), for the optional VIF loss term.

The same statistics as `metrics.core.vif_p` (4 scales, Gaussian windows of 17/9/5/3 taps applied 'valid',
downsampling by 2 after filtering, sigma_n^2 = 2 on the 0-255 scale), with its special cases (flat reference,
flat or anti-correlated distorted image) as `torch.where` branches so that gradients stay finite.
"""
from __future__ import annotations

import torch

from .ssim_torch import ImageTooSmallError, _filter_valid, gaussian_window_1d

NOISE_VAR = 2.0  # sigma_n^2 on the 0-255 scale, as vifp_mscale.m
_EPS = 1e-10


def vif_p(reference: torch.Tensor, distorted: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """VIFp(reference -> distorted) per image: (B, C, H, W) twice -> (B, C). Images need 41 px or more a side."""
    if reference.shape != distorted.shape or reference.dim() != 4:
        raise ValueError(f"reference and distorted must be (B, C, H, W) of one shape, got "
                         f"{tuple(reference.shape)} and {tuple(distorted.shape)}")
    if min(reference.shape[-2:]) < 41:
        raise ImageTooSmallError(f"VIF needs images of at least 41x41 pixels (4 scales), got {tuple(reference.shape[-2:])}")
    scale_to_255 = 255.0 / data_range
    ref, dist = reference.float() * scale_to_255, distorted.float() * scale_to_255
    num = den = 0.0
    for scale in range(1, 5):
        size = 2 ** (5 - scale) + 1
        win = gaussian_window_1d(size, size / 5.0, dtype=ref.dtype, device=ref.device)
        if scale > 1:
            ref = _filter_valid(ref, win)[..., ::2, ::2]
            dist = _filter_valid(dist, win)[..., ::2, ::2]
        mu1, mu2 = _filter_valid(ref, win), _filter_valid(dist, win)
        s1 = (_filter_valid(ref * ref, win) - mu1 * mu1).clamp_min(0.0)
        s2 = (_filter_valid(dist * dist, win) - mu2 * mu2).clamp_min(0.0)
        s12 = _filter_valid(ref * dist, win) - mu1 * mu2
        g = s12 / (s1 + _EPS)
        sv = s2 - g * s12
        flat_ref, flat_dist, negative = s1 < _EPS, s2 < _EPS, g < 0
        sv = torch.where(flat_ref | negative, s2, sv)
        g = torch.where(flat_ref | flat_dist | negative, torch.zeros_like(g), g)
        sv = torch.where(flat_dist, torch.zeros_like(sv), sv).clamp_min(_EPS)
        s1 = torch.where(flat_ref, torch.zeros_like(s1), s1)
        num = num + torch.log10(1.0 + g * g * s1 / (sv + NOISE_VAR)).sum(dim=(-2, -1))
        den = den + torch.log10(1.0 + s1 / NOISE_VAR).sum(dim=(-2, -1))
    return num / den.clamp_min(_EPS)
