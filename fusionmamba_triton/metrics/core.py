"""Image-fusion metrics on one grey (A, B, F) triple: 2-D float64 arrays on the 0-255 scale.

The conventions are described in the package docstring (fusionmamba_triton.metrics) and the
README's "Metrics" section; each function's docstring gives its formula. Each takes the sources
`a`, `b`, the fused image `f` and a `convention` in CONVENTIONS; input checking lives in
`evaluate`. A metric whose window or scales do not fit the image raises ImageTooSmallError,
which `evaluate` reports as NaN.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .ssim_torch import MS_SSIM_WEIGHTS, ImageTooSmallError, gaussian_window_1d, ms_ssim_window_sizes

CONVENTIONS = ("canonical", "matlab", "cddfuse", "vifb")
PSNR_TANG_OFFSET_DB = 20.0 * math.log10(255.0)  # 48.1308: Tang's PSNR = standard PSNR + this

_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


def to_uint8_levels(x: np.ndarray, rounding: str = "half_away") -> np.ndarray:
    """0-255 floats to integer grey levels 0..255 (int64): MATLAB uint8 rounding, numpy's, or floor."""
    if rounding == "half_away":
        levels = np.floor(x + 0.5)  # inputs are >= 0 after clipping, where this is half-away-from-zero
    elif rounding == "even":
        levels = np.round(x)
    else:
        levels = np.floor(x)
    return np.clip(levels, 0, 255).astype(np.int64)


def _rounding(convention: str) -> str:
    return {"cddfuse": "even", "vifb": "floor"}.get(convention, "half_away")


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation over all pixels (MATLAB corr2); NaN when either image is constant."""
    dx = x - x.mean()
    dy = y - y.mean()
    denom = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum()) / denom if denom > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# single-image statistics


def entropy(a, b, f, convention="canonical"):
    """EN: Shannon entropy (bits) of the 256-bin histogram of F as uint8."""
    p = np.bincount(to_uint8_levels(f, _rounding(convention)).ravel(), minlength=256) / f.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def standard_deviation(a, b, f, convention="canonical"):
    """SD: population standard deviation of F."""
    return float(np.std(f))


def _check_two_pixels(name: str, f: np.ndarray) -> None:
    if min(f.shape) < 2:
        raise ImageTooSmallError(f"{name} needs images of at least 2x2 pixels (differences in both directions), got {f.shape}")


def spatial_frequency(a, b, f, convention="canonical"):
    """SF = sqrt(RF^2 + CF^2); means over the M(N-1) and (M-1)N differences, or sums / MN for VIFB."""
    _check_two_pixels("SF", f)
    dx2 = np.diff(f, axis=1) ** 2
    dy2 = np.diff(f, axis=0) ** 2
    if convention == "vifb":
        return float(math.sqrt((dx2.sum() + dy2.sum()) / f.size))
    return float(math.sqrt(dx2.mean() + dy2.mean()))


def average_gradient(a, b, f, convention="canonical"):
    """AG: sum of sqrt((Gx^2 + Gy^2) / 2) over MN pixels, / (M-1)(N-1), or / MN for CDDFuse."""
    _check_two_pixels("AG", f)
    gy, gx = np.gradient(f)
    total = float(np.sqrt((gx * gx + gy * gy) / 2.0).sum())
    m, n = f.shape
    return total / f.size if convention == "cddfuse" else total / ((m - 1) * (n - 1))


# ---------------------------------------------------------------------------------------------
# information and correlation


def _mutual_information(x_levels: np.ndarray, y_levels: np.ndarray) -> float:
    """Mutual information in nats of two integer images with values 0..255 (256x256 joint histogram)."""
    joint = np.bincount((x_levels * 256 + y_levels).ravel(), minlength=256 * 256).reshape(256, 256)
    p = joint / joint.sum()
    px = p.sum(axis=1)
    py = p.sum(axis=0)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / np.outer(px, py)[nz])).sum())


def _vifb_levels(x: np.ndarray) -> np.ndarray:
    """VIFB's MI quantisation: min-max rescale to [0, 1] (constant -> 0), then int16(x * 255)."""
    lo, hi = x.min(), x.max()
    scaled = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return to_uint8_levels(scaled * 255.0, "half_away")


def mutual_information(a, b, f, convention="canonical"):
    """MI = I(A;F) + I(B;F) from 256-bin joint histograms; bits (canonical, matlab) or nats (cddfuse, vifb)."""
    if convention == "vifb":
        la, lb, lf = _vifb_levels(a), _vifb_levels(b), _vifb_levels(f)
    else:
        rounding = _rounding(convention)
        la, lb, lf = (to_uint8_levels(x, rounding) for x in (a, b, f))
    nats = _mutual_information(la, lf) + _mutual_information(lb, lf)
    return nats if convention in ("cddfuse", "vifb") else nats / math.log(2.0)


def correlation_coefficient(a, b, f, convention="canonical"):
    """CC = (r(A, F) + r(B, F)) / 2."""
    return 0.5 * (_corr(a, f) + _corr(b, f))


def scd(a, b, f, convention="canonical"):
    """SCD (sum of the correlations of differences) = r(F - B, A) + r(F - A, B)."""
    return _corr(f - b, a) + _corr(f - a, b)


def psnr(a, b, f, convention="canonical"):
    """PSNR against both sources, MSE = (MSE(A,F) + MSE(B,F)) / 2.

    canonical: 10 log10(255^2 / MSE); cddfuse: max(F)^2 in place of 255^2; matlab (Tang):
    20 log10(255 / sqrt(MSE on 0-1)) = canonical + 48.13 dB; vifb: 20 log10(255 / sqrt(m)) with
    m = (||A-F||_F + ||B-F||_F) / (2MN), which is not an MSE.
    """
    if convention == "vifb":
        m = 0.5 * (np.linalg.norm(a - f) + np.linalg.norm(b - f)) / f.size
        return 20.0 * math.log10(255.0) - 10.0 * math.log10(m) if m > 0 else float("inf")
    mse = 0.5 * (np.mean((a - f) ** 2) + np.mean((b - f) ** 2))
    if mse == 0:
        return float("inf")
    if convention == "cddfuse":
        return 10.0 * math.log10(float(f.max()) ** 2 / mse)
    if convention == "matlab":
        return 20.0 * math.log10(255.0 / math.sqrt(mse / 255.0**2))
    return 10.0 * math.log10(255.0**2 / mse)


# ---------------------------------------------------------------------------------------------
# structural similarity


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """1-D factor of MATLAB fspecial('gaussian', size, sigma).

    fspecial zeroes entries below eps * max; for the sizes used here (sigma >= size / 7.4) none
    are, so the 2-D window is exactly the outer product of this normalised 1-D Gaussian.
    """
    return gaussian_window_1d(size, sigma).numpy()


def _filter(x: np.ndarray, win: np.ndarray, mode: str = "valid") -> np.ndarray:
    """Separable correlation with outer(win, win): MATLAB filter2(..., 'valid'), or ndimage padding `mode`."""
    pad_mode = "constant" if mode == "valid" else mode
    out = ndimage.correlate1d(ndimage.correlate1d(x, win, axis=0, mode=pad_mode), win, axis=1, mode=pad_mode)
    if mode != "valid":
        return out
    before = (win.size - 1) // 2
    after = win.size - 1 - before
    return out[before : x.shape[0] - after, before : x.shape[1] - after]


def _ssim_maps(x, y, win, c1, c2, mode="valid", sample_covariance=False):
    """Luminance and contrast-structure maps of SSIM with the separable window outer(win, win).

    The one numpy SSIM: 'valid' crops (MATLAB filter2 'valid'), another `mode` pads as ndimage
    does; sample_covariance rescales the (co)variances by n / (n - 1) as skimage does.
    """
    mu_x, mu_y = _filter(x, win, mode), _filter(y, win, mode)
    var_x = _filter(x * x, win, mode) - mu_x * mu_x
    var_y = _filter(y * y, win, mode) - mu_y * mu_y
    cov = _filter(x * y, win, mode) - mu_x * mu_y
    if sample_covariance:
        n = win.size**2
        var_x, var_y, cov = (v * n / (n - 1.0) for v in (var_x, var_y, cov))
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return luminance, (2 * cov + c2) / (var_x + var_y + c2)


def _ssim_one(x, y, convention):
    if convention == "cddfuse":
        # skimage 0.19 defaults on float input: 7x7 uniform, sample covariance, data_range 2, crop 3
        win, c1, c2, mode, sample = np.full(7, 1.0 / 7.0), (0.01 * 2) ** 2, (0.03 * 2) ** 2, "valid", True
    elif convention == "matlab":
        # MATLAB ssim on 0-255 doubles: Gaussian sigma 1.5 (11 taps), replicate padding, DynamicRange 1
        win, c1, c2, mode, sample = _gaussian_1d(11, 1.5), 0.01**2, 0.03**2, "nearest", False
    else:
        win, c1, c2, mode, sample = _gaussian_1d(11, 1.5), (0.01 * 255) ** 2, (0.03 * 255) ** 2, "valid", False
    luminance, cs = _ssim_maps(x, y, win, c1, c2, mode, sample)
    return float((luminance * cs).mean())


def structural_similarity(a, b, f, convention="canonical"):
    """SSIM of F against each source: mean of the two (canonical, matlab) or their sum (cddfuse, vifb)."""
    if min(f.shape) < (7 if convention == "cddfuse" else 11):
        raise ImageTooSmallError(f"SSIM needs images of at least 11x11 pixels (7x7 for cddfuse), got {f.shape}")
    total = _ssim_one(f, a, convention) + _ssim_one(f, b, convention)
    return total if convention in ("cddfuse", "vifb") else 0.5 * total


def _average_pool_2x2(x: np.ndarray) -> np.ndarray:
    """2x2 mean pooling, stride 2; an odd side is zero-padded by one on both ends (torch avg_pool2d
    with padding = side % 2, count_include_pad), as pytorch_msssim downsamples."""
    pad = [(s % 2, s % 2) for s in x.shape]
    x = np.pad(x, pad)
    rows, cols = x.shape[0] // 2, x.shape[1] // 2
    x = x[: 2 * rows, : 2 * cols]
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def _ms_ssim_one(x: np.ndarray, y: np.ndarray) -> float:
    win = _gaussian_1d(11, 1.5)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    value = 1.0
    for level, weight in enumerate(MS_SSIM_WEIGHTS):
        luminance, cs = _ssim_maps(x, y, win, c1, c2)
        if level < len(MS_SSIM_WEIGHTS) - 1:
            value *= max(float(cs.mean()), 0.0) ** weight
            x, y = _average_pool_2x2(x), _average_pool_2x2(y)
        else:
            value *= max(float((luminance * cs).mean()), 0.0) ** weight
    return value


def ms_ssim(a, b, f, convention="canonical"):
    """Wang 2003 MS-SSIM (5 scales, L=255), mean over the two sources; short side must exceed 160 px.

    Gaussian 11/1.5 'valid', 2x2 average pooling as pytorch_msssim (zero-padded odd sides),
    negative cs / SSIM clamped to 0. The MATLAB family's "MS_SSIM" column is a different metric
    (MEF-SSIM, Ma et al. 2015) that is not reproduced: every convention returns Wang's MS-SSIM.
    """
    ms_ssim_window_sizes(*f.shape)  # raises ImageTooSmallError for images too small for 5 scales
    return 0.5 * (_ms_ssim_one(a, f) + _ms_ssim_one(b, f))


def vif_p(reference: np.ndarray, distorted: np.ndarray, noise_var: float = 2.0) -> float:
    """Sheikh & Bovik pixel-domain multiscale VIF (vifp_mscale.m) of a distorted image against a reference.

    NaN when the reference is flat at every scale (the ratio is 0 / 0).
    """
    num = den = 0.0
    ref, dist = reference, distorted
    for scale in range(1, 5):
        size = 2 ** (5 - scale) + 1
        win = _gaussian_1d(size, size / 5.0)
        if scale > 1:
            ref = _filter(ref, win)[::2, ::2]
            dist = _filter(dist, win)[::2, ::2]
        mu1, mu2 = _filter(ref, win), _filter(dist, win)
        s1 = np.maximum(_filter(ref * ref, win) - mu1 * mu1, 0.0)
        s2 = np.maximum(_filter(dist * dist, win) - mu2 * mu2, 0.0)
        s12 = _filter(ref * dist, win) - mu1 * mu2
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        flat_ref = s1 < 1e-10
        g[flat_ref] = 0.0
        sv[flat_ref] = s2[flat_ref]
        s1[flat_ref] = 0.0
        flat_dist = s2 < 1e-10
        g[flat_dist] = 0.0
        sv[flat_dist] = 0.0
        negative = g < 0
        sv[negative] = s2[negative]
        g[negative] = 0.0
        sv = np.maximum(sv, 1e-10)
        num += float(np.log10(1.0 + g * g * s1 / (sv + noise_var)).sum())
        den += float(np.log10(1.0 + s1 / noise_var).sum())
    return num / den if den > 0 else float("nan")  # a flat reference carries no information


def vif(a, b, f, convention="canonical"):
    """VIF as used in fusion papers: VIFp(A -> F) + VIFp(B -> F), sigma_n^2 = 2 on 0-255."""
    if min(f.shape) < 41:
        raise ImageTooSmallError(f"VIF needs images of at least 41x41 pixels (4 scales), got {f.shape}")
    return vif_p(a, f) + vif_p(b, f)


# ---------------------------------------------------------------------------------------------
# gradient-based: Q^AB/F (Xydeas & Petrovic) and Nabf (Shreyamsha Kumar)


def _qabf_edges(x: np.ndarray):
    """Sobel strength and angle atan(sy/sx) (pi/2 where sx == 0), zero-padded 'same' convolution."""
    sx = ndimage.convolve(x, _SOBEL_X, mode="constant")
    sy = ndimage.convolve(x, _SOBEL_Y, mode="constant")
    g = np.sqrt(sx * sx + sy * sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(sx == 0, math.pi / 2, np.arctan(sy / sx))
    return g, alpha


def _qabf_preservation(g_src, a_src, g_f, a_f, equal_gradient):
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(g_src > g_f, g_f / g_src, g_src / g_f)
    equal = g_src == g_f
    ratio = np.where(equal, g_f if equal_gradient == "quirk" else 1.0, ratio)
    orient = 1.0 - np.abs(a_src - a_f) / (math.pi / 2)
    q_g = 0.9994 / (1.0 + np.exp(-15.0 * (ratio - 0.5)))
    q_a = 0.9879 / (1.0 + np.exp(-22.0 * (orient - 0.8)))
    return q_g * q_a


def qabf(a, b, f, convention="canonical", equal_gradient="quirk"):
    """Q^AB/F with the published code's quirk: where g_A == g_F, G^AF = g_F (equal_gradient="one" gives 1)."""
    if equal_gradient not in ("quirk", "one"):
        raise ValueError(f"equal_gradient must be 'quirk' or 'one', got {equal_gradient!r}")
    g_a, al_a = _qabf_edges(a)
    g_b, al_b = _qabf_edges(b)
    g_f, al_f = _qabf_edges(f)
    q_af = _qabf_preservation(g_a, al_a, g_f, al_f, equal_gradient)
    q_bf = _qabf_preservation(g_b, al_b, g_f, al_f, equal_gradient)
    den = float((g_a + g_b).sum())
    return float((q_af * g_a + q_bf * g_b).sum()) / den if den > 0 else float("nan")


def _nabf_edges(x: np.ndarray):
    """Sobel/8 with periodic extension: strength and angle atan(gv/gh) (0 where both are 0)."""
    gv = ndimage.convolve(x, _SOBEL_Y / 8.0, mode="wrap")
    gh = ndimage.convolve(x, _SOBEL_X / 8.0, mode="wrap")
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.arctan(gv / gh)
    alpha[(gv == 0) & (gh == 0)] = 0.0
    return np.sqrt(gv * gv + gh * gh), alpha


def _nabf_preservation(g_src, a_src, g_f, a_f):
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(g_src > g_f, g_f / g_src, g_src / g_f)
    ratio[(g_src == 0) | (g_f == 0)] = 0.0
    orient = np.abs(np.abs(a_src - a_f) - math.pi / 2) * 2.0 / math.pi
    q_g = 0.9999 / (1.0 + np.exp(-19.0 * (ratio - 0.5)))
    q_a = 0.9995 / (1.0 + np.exp(-22.0 * (orient - 0.5)))
    return np.sqrt(q_g * q_a)


def nabf_kumar(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Shreyamsha Kumar's modified fusion-artifact measure, argument order (F, A, B) as analysis_nabf.m."""
    g_a, al_a = _nabf_edges(a)
    g_b, al_b = _nabf_edges(b)
    g_f, al_f = _nabf_edges(f)
    q_af = _nabf_preservation(g_a, al_a, g_f, al_f)
    q_bf = _nabf_preservation(g_b, al_b, g_f, al_f)
    w_a = np.where(g_a >= 2.0, g_a**1.5, 0.001)
    w_b = np.where(g_b >= 2.0, g_b**1.5, 0.001)
    artifact = (g_f > g_a) & (g_f > g_b)
    return float((artifact * ((1.0 - q_af) * w_a + (1.0 - q_bf) * w_b)).sum() / (w_a + w_b).sum())


def nabf(a, b, f, convention="canonical"):
    """Nabf(F; A, B) on 0-255; "matlab" reproduces Tang 2023's swapped call nabf(F=A; A=B, B=F)."""
    return nabf_kumar(a, b, f) if convention == "matlab" else nabf_kumar(f, a, b)
