"""Feature mutual information (Haghighat et al. 2011, fast FMI 2014), vectorised over 3x3 windows.

Every (w x w) window position is one row of a (windows, w*w) array; blocks of windows are scored
at once (and blocks in parallel threads), with the joint entropy of Nelsen's Frechet-bound mixture
computed in closed form on the bound's staircase (see `_pair_fmi`), so no per-window loop.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pywt
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from .ssim_torch import ImageTooSmallError

FMI_FEATURES = ("edge", "none", "dct", "wavelet", "gradient")
_BLOCK = 16384  # windows per vectorised block: its (block, 2 w^2 - 1) float64 arrays stay near 2 MB


def matlab_sobel_edges(x: np.ndarray) -> np.ndarray:
    """MATLAB `edge(X)` (Sobel, automatic threshold, thinning) as a {0, 1} float array.

    Sobel/8 by correlation with replicate padding; b = bx^2 + by^2; cutoff = 4 mean(b); an edge
    where b > cutoff and b is a strict local maximum along the dominant gradient axis.
    """
    op = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]) / 8.0
    bx = ndimage.correlate(x, op.T, mode="nearest")
    by = ndimage.correlate(x, op, mode="nearest")
    b = bx * bx + by * by
    cutoff = 4.0 * b.mean()
    padded = np.pad(b, 1, mode="edge")
    left, right = padded[1:-1, :-2], padded[1:-1, 2:]
    up, down = padded[:-2, 1:-1], padded[2:, 1:-1]
    horizontal = np.abs(bx) >= np.abs(by)
    local_max = np.where(horizontal, (b > left) & (b > right), (b > up) & (b > down))
    return ((b > cutoff) & local_max).astype(np.float64)


def fmi_feature(x: np.ndarray, feature: str) -> np.ndarray:
    """Feature image of `x` for FMI: 'none' (pixels), 'edge', 'dct', 'wavelet' or 'gradient'."""
    if feature == "none":
        return x
    if feature == "edge":
        return matlab_sobel_edges(x)
    if feature == "gradient":
        return np.gradient(x, axis=1)
    if feature == "dct":
        return scipy.fft.dctn(x, norm="ortho")
    if feature == "wavelet":
        approx, (horiz, vert, diag) = pywt.dwt2(x, "dmey", mode="symmetric")
        tiled = np.block([[approx, horiz], [vert, diag]])
        lo, hi = tiled.min(), tiled.max()
        return (tiled - lo) / (hi - lo) if hi > lo else np.zeros_like(tiled)
    raise ValueError(f"feature must be one of {FMI_FEATURES}, got {feature!r}")


def _windows(x: np.ndarray, w: int) -> np.ndarray:
    """All w x w windows of x, each flattened column-major: (windows, w*w)."""
    view = sliding_window_view(x, (w, w))  # (rows, cols, w, w)
    return np.ascontiguousarray(view.swapaxes(-1, -2)).reshape(-1, w * w)


def _log2_or_zero(x: np.ndarray) -> np.ndarray:
    """log2|x|, with 0 where x == 0 (so that x * log2|x| follows 0 * log 0 = 0)."""
    magnitude = np.abs(x)
    magnitude[magnitude == 0] = 1.0
    return np.log2(magnitude, out=magnitude)


def _window_pdfs(win: np.ndarray):
    """Min-max normalised windows as PDFs, their log2 (0 where p = 0), entropies (bits), index means and SDs."""
    lo = win.min(axis=1, keepdims=True)
    span = win.max(axis=1, keepdims=True) - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(span > 0, (win - lo) / span, 1.0)
    pdf = scaled / scaled.sum(axis=1, keepdims=True)
    log_pdf = _log2_or_zero(pdf)
    entropy = -(pdf * log_pdf).sum(axis=1)
    k = np.arange(1, win.shape[1] + 1, dtype=np.float64)
    mean = pdf @ k
    sd = np.sqrt(np.maximum(pdf @ (k * k) - mean * mean, 0.0))
    return pdf, log_pdf, entropy, mean, sd


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation; NaN where a row is constant."""
    dx = x - x.mean(axis=1, keepdims=True)
    dy = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (dx * dy).sum(axis=1) / denom, np.nan)


def _pair_fmi(src_win: np.ndarray, fused_win: np.ndarray, fused_stats) -> np.ndarray:
    """Per-window FMI between a source and the fused feature windows: (windows,).

    The Frechet-bound joint PMF (upper bound where c >= 0, lower where c < 0) is non-zero only on
    a staircase of at most 2n - 1 cells: the pieces of [0, 1] cut at the source's and the fused
    window's CDF values (the fused ones reflected, 1 - C_f, for the lower bound). So the joint
    entropy is the closed-form entropy of the independent term (1 - phi) p_a p_f^T, corrected on
    those cells, which costs O(n) per window instead of the O(n^2) of the explicit n x n PMF.
    """
    pa, la, ha, mua, sda = _window_pdfs(src_win)
    pf, lf, hf, muf, sdf = fused_stats
    c = _pearson_rows(pa, pf)
    result = np.where((src_win == fused_win).all(axis=1), 1.0, 0.0)
    # windows with an undefined c (a constant window) or bound correlation (a point-mass PDF) score 0
    active = (result == 0.0) & np.isfinite(c) & (sda > 0) & (sdf > 0)
    pa, la, ha, mua, sda = pa[active], la[active], ha[active], mua[active], sda[active]
    pf, lf, hf, muf, sdf = pf[active], lf[active], hf[active], muf[active], sdf[active]
    c = c[active]
    windows, n = pa.shape
    upper = (c >= 0)[:, None]

    cdf_a = np.cumsum(pa, axis=1)[:, :-1]
    cdf_f = np.cumsum(pf, axis=1)[:, :-1]
    cuts = np.concatenate([cdf_a, np.where(upper, cdf_f, 1.0 - cdf_f)], axis=1)  # (windows, 2n - 2)
    order = np.argsort(cuts, axis=1, kind="stable")
    cuts = np.take_along_axis(cuts, order, axis=1)
    lengths = np.diff(cuts, axis=1, prepend=0.0, append=1.0)  # (windows, 2n - 1)
    row = np.zeros((windows, 2 * n - 1), dtype=np.int64)  # 0-based PDF indices of each piece
    np.cumsum(order < n - 1, axis=1, out=row[:, 1:])
    col = np.arange(2 * n - 1) - row
    col = np.where(upper, col, n - 1 - col)

    bound_moment = ((row + 1) * (col + 1) * lengths).sum(axis=1)  # E[i j] under the bound PMF
    mix = c / ((bound_moment - mua * muf) / (sda * sdf))
    base = (np.arange(windows) * n)[:, None]
    row += base
    col += base
    # independent term (1 - phi) p_a p_f^T on the staircase cells, and its log2 |.|
    log_scale = _log2_or_zero(1.0 - mix)
    independent = (1.0 - mix)[:, None] * pa.ravel()[row] * pf.ravel()[col]
    log_independent = log_scale[:, None] + la.ravel()[row] + lf.ravel()[col]
    mixed = mix[:, None] * lengths + independent
    correction = (mixed * _log2_or_zero(mixed) - independent * log_independent).sum(axis=1)
    independent_sum = (1.0 - mix) * (log_scale - ha - hf)  # sum of q log2|q| over all n x n cells
    h_joint = -(independent_sum + correction)
    value = 2.0 * (ha + hf - h_joint) / (ha + hf)
    result[active] = np.where(np.isfinite(value), value, 0.0)
    return result


def fmi(a: np.ndarray, b: np.ndarray, f: np.ndarray, feature: str = "edge", window: int = 3) -> float:
    """FMI = mean over w x w windows of (FMI(A,F) + FMI(B,F)) / 2 on the chosen feature images."""
    if window < 2:
        raise ValueError(f"FMI window must be >= 2, got {window}")
    if min(f.shape) < window:
        raise ImageTooSmallError(f"FMI needs images of at least {window}x{window} pixels (its window), got {f.shape}")
    fa, fb, ff = (fmi_feature(x, feature) for x in (a, b, f))
    wa, wb, wf = (_windows(x, window) for x in (fa, fb, ff))

    def block_sum(start: int) -> float:
        block = slice(start, start + _BLOCK)
        fused_stats = _window_pdfs(wf[block])
        return float(_pair_fmi(wa[block], wf[block], fused_stats).sum() + _pair_fmi(wb[block], wf[block], fused_stats).sum())

    starts = range(0, wf.shape[0], _BLOCK)
    workers = min(len(starts), os.cpu_count() or 1, 8)
    if workers > 1:  # numpy releases the GIL inside its array operations
        with ThreadPoolExecutor(workers) as pool:
            total = sum(pool.map(block_sum, starts))
    else:
        total = sum(block_sum(start) for start in starts)
    return total / (2.0 * wf.shape[0])
