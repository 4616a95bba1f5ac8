"""Differentiable SSIM (Wang 2004) and MS-SSIM (Wang 2003) in PyTorch, shared by metrics and losses.

Both take (B, C, H, W) floating tensors and return one value per (batch, channel): (B, C).
Statistics use a separable Gaussian window applied 'valid' (no padding) and population
(co)variances, as `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)` and `pytorch_msssim` do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


class ImageTooSmallError(ValueError):
    """The image is smaller than a metric's window or scales need: the metric is undefined for it.

    `evaluate` turns it into NaN (with one warning); the loss and direct calls see the error.
    """


def gaussian_window_1d(size: int, sigma: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd length `size`, centred on the middle tap: (size,)."""
    coords = torch.arange(size, dtype=dtype, device=device) - size // 2
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Depthwise separable correlation of (B, C, H, W) with the 1-D window, 'valid' in both axes."""
    channels = x.shape[1]
    size = win.numel()
    x = F.conv2d(x, win.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
    return F.conv2d(x, win.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)


def ssim_and_cs(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float,
    win_size: int = 11,
    sigma: float = 1.5,
    k: tuple[float, float] = (0.01, 0.03),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM map and mean contrast-structure map of (B, C, H, W) images: two (B, C) tensors."""
    if min(x.shape[-2:]) < win_size:
        raise ImageTooSmallError(f"images of size {tuple(x.shape[-2:])} are smaller than the {win_size}-pixel SSIM window")
    win = gaussian_window_1d(win_size, sigma, dtype=x.dtype, device=x.device)
    c1 = (k[0] * data_range) ** 2
    c2 = (k[1] * data_range) ** 2
    mu_x = _filter_valid(x, win)
    mu_y = _filter_valid(y, win)
    var_x = _filter_valid(x * x, win) - mu_x * mu_x
    var_y = _filter_valid(y * y, win) - mu_y * mu_y
    cov = _filter_valid(x * y, win) - mu_x * mu_y
    cs_map = (2.0 * cov + c2) / (var_x + var_y + c2)
    luminance = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return (luminance * cs_map).mean(dim=(-2, -1)), cs_map.mean(dim=(-2, -1))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float, win_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Wang 2004 SSIM, Gaussian window, K = (0.01, 0.03), mean of the 'valid' map: (B, C)."""
    return ssim_and_cs(x, y, data_range, win_size, sigma)[0]


def ms_ssim_window_sizes(height: int, width: int, win_size: int = 11, adapt_window: bool = False) -> list[int]:
    """Window size used at each of the 5 MS-SSIM scales for an image of height x width.

    Strict (adapt_window=False, Wang 2003 / pytorch_msssim): the short side must exceed
    (win_size - 1) * 16, i.e. 161 px for 11 taps. Adaptive: at a scale whose short side is below
    win_size, the Gaussian (same sigma) is cut to the largest odd size that fits; the coarsest
    scale must still hold a 3-tap window, i.e. the short side must be at least 33 px.
    """
    side = min(height, width)
    if not adapt_window:
        if side <= (win_size - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1):
            raise ImageTooSmallError(
                f"5-scale MS-SSIM with a {win_size}-tap window needs images whose short side exceeds "
                f"{(win_size - 1) * 16} px, got {height}x{width}"
            )
        return [win_size] * len(MS_SSIM_WEIGHTS)
    sizes = []
    for _ in MS_SSIM_WEIGHTS:
        fit = side if side % 2 else side - 1
        sizes.append(min(win_size, fit))
        side = (side + 1) // 2  # the 2x2 average pool pads odd sides, so sizes round up
    if sizes[-1] < 3:
        raise ImageTooSmallError(f"5-scale MS-SSIM needs images whose short side is at least 33 px, got {height}x{width}")
    return sizes


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float,
    win_size: int = 11,
    sigma: float = 1.5,
    adapt_window: bool = False,
    min_value: float = 0.0,
) -> torch.Tensor:
    """Wang 2003 5-scale MS-SSIM, l_5^w5 * prod_j cs_j^wj, of (B, C, H, W) images: (B, C).

    Between scales: 2x2 average pooling, zero-padding odd sides (pytorch_msssim's convention).
    Negative cs / SSIM values are clamped to `min_value` before the powers (0 as pytorch_msssim;
    a small positive value keeps the gradient finite in a loss).
    """
    sizes = ms_ssim_window_sizes(x.shape[-2], x.shape[-1], win_size, adapt_window)
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=x.dtype, device=x.device)
    factors = []
    for level, size in enumerate(sizes):
        ssim_value, cs = ssim_and_cs(x, y, data_range, size, sigma)
        if level < len(sizes) - 1:
            factors.append(cs.clamp_min(min_value))
            padding = [s % 2 for s in x.shape[-2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    factors.append(ssim_value.clamp_min(min_value))
    stacked = torch.stack(factors, dim=0)
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0)
