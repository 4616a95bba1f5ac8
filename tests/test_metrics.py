"""Fusion metrics against independent implementations and hand-worked cases.

The conventions tested here are described in the fusionmamba_triton.metrics package docstring.
"""
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from fusionmamba_triton.metrics import (
    ALIASES,
    CONVENTIONS,
    METRICS,
    PSNR_TANG_OFFSET_DB,
    ImageTooSmallError,
    UndefinedMetricWarning,
    evaluate,
    fmi,
    qabf,
    rgb_to_y,
    vif_p,
)
from fusionmamba_triton.metrics import core
from fusionmamba_triton.metrics.feature_mi import fmi_feature, matlab_sobel_edges
from tests.helpers import shared_data


def smooth_image(shape, seed, sigma=2.0):
    """Random texture on 0-255 with some structure (Gaussian-smoothed noise, stretched)."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return 255.0 * (x - x.min()) / (x.max() - x.min())


@pytest.fixture(scope="module")
def triple():
    a = smooth_image((67, 83), 0)
    b = smooth_image((67, 83), 1, sigma=1.0)
    return a, b, 0.5 * (a + b)


def score(name, a, b, f, **kwargs):
    return evaluate(a, b, f, [name], **kwargs)[name]


# --------------------------------------------------------------------------------------------
# API and input checking


def test_names():
    assert METRICS[:6] == ("vif", "scd", "qabf", "sf", "ms_ssim", "fmi_edge")
    assert set(METRICS) >= {"en", "sd", "mi", "ag", "ssim", "psnr", "cc", "nabf", "fmi_pixel", "fmi_dct", "fmi_w"}
    assert CONVENTIONS == ("canonical", "matlab", "cddfuse", "vifb")
    assert ALIASES == {"fmi": "fmi_edge"}


def test_fmi_alias_is_edge(triple):
    out = evaluate(*triple, ["fmi", "fmi_edge"])
    assert out["fmi"] == out["fmi_edge"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"metrics": ["en", "bogus"]}, "metrics"),
        ({"metrics": []}, "metrics"),
        ({"convention": "tang"}, "convention"),
        ({"colour": "rgb"}, "colour"),
    ],
    ids=["unknown-metric", "no-metric", "unknown-convention", "unknown-colour"],
)
def test_rejects_bad_options(triple, kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate(*triple, **kwargs)


def test_rejects_bad_images(triple):
    a, b, f = triple
    with pytest.raises(ValueError, match="same height and width"):
        evaluate(a, b[:-1], f, ["en"])
    with pytest.raises(ValueError, match="fused is empty"):
        evaluate(a, b, f[:0], ["en"])
    bad = f.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="fused contains NaN"):
        evaluate(a, b, bad, ["en"])
    with pytest.raises(ValueError, match="b must be a 2-D grey image"):
        evaluate(a, b[None], f, ["en"])
    with pytest.raises(ValueError, match="a must be a numpy array"):
        evaluate(a.tolist(), b, f, ["en"])
    with pytest.raises(ValueError, match="dtype"):
        evaluate(a > 0, b, f, ["en"])


def test_warns_on_unit_scale_images(triple):
    a, b, f = (x / 255.0 for x in triple)
    with pytest.warns(UserWarning, match="0-255"):
        evaluate(a, b, f, ["sd"])


@pytest.mark.parametrize("shape, undefined", [
    ((40, 40), ["vif", "ms_ssim"]),
    ((160, 300), ["ms_ssim"]),
    ((10, 10), ["vif", "ms_ssim", "ssim"]),
    ((2, 2), ["vif", "ms_ssim", "fmi_edge", "fmi_pixel", "fmi_dct", "fmi_w", "ssim"]),
    ((1, 5), ["vif", "sf", "ms_ssim", "fmi_edge", "fmi_pixel", "fmi_dct", "fmi_w", "ag", "ssim"]),
], ids=["40x40", "160x300", "10x10", "2x2", "1x5"])
def test_metrics_too_big_for_the_image_are_nan_with_one_warning(shape, undefined):
    if min(shape) > 1:
        a, b = smooth_image(shape, 0), smooth_image(shape, 1)
    else:
        a, b = np.arange(5.0)[None] * 50, np.array([[3.0, 90.0, 20.0, 200.0, 7.0]])
    f = 0.5 * (a + b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = evaluate(a, b, f)
    assert [name for name, value in out.items() if math.isnan(value)] == undefined
    assert len(caught) == 1 and caught[0].category is UndefinedMetricWarning
    assert list(caught[0].message.reasons) == undefined
    assert f"{shape[1]}x{shape[0]} image" in str(caught[0].message)
    with pytest.raises(ImageTooSmallError, match="px|pixels"):  # the metric functions themselves still raise
        core.ms_ssim(a, b, f)


def test_vif_with_a_constant_source_is_nan():
    a = smooth_image((50, 50), 0)
    assert math.isnan(score("vif", a, np.full_like(a, 100.0), a))


def test_no_warning_when_every_metric_is_defined(triple):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        assert not any(math.isnan(v) for v in evaluate(*triple, ["vif", "ssim", "sf", "ag", "fmi_edge"]).values())


def test_torch_and_uint8_inputs_match_float64(triple):
    a, b, f = triple
    names = ["en", "sd", "sf", "ag", "mi", "vif", "qabf", "psnr"]
    expected = evaluate(a, b, f, names)
    got = evaluate(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(f), names)
    for name in names:
        assert got[name] == pytest.approx(expected[name], rel=1e-5), name
    rounded = [np.floor(x + 0.5) for x in (a, b, f)]
    as_uint8 = evaluate(*[x.astype(np.uint8) for x in rounded], names)
    assert as_uint8 == evaluate(*rounded, names)


# --------------------------------------------------------------------------------------------
# against independent implementations


@pytest.mark.parametrize("shape", [(64, 64), (97, 131)], ids=["64x64", "97x131"])
def test_vif_matches_sewar(shape):
    sewar = pytest.importorskip("sewar.full_ref")
    a, b = smooth_image(shape, 2), smooth_image(shape, 3, sigma=1.0)
    f = np.clip(0.6 * a + 0.5 * b - 10.0, 0, 255)
    expected = sewar.vifp(a, f) + sewar.vifp(b, f)
    assert score("vif", a, b, f) == pytest.approx(expected, rel=1e-9)


def test_vif_of_a_copy_is_one_per_source():
    a = smooth_image((64, 80), 4)
    assert score("vif", a, a, a) == pytest.approx(2.0, abs=1e-9)  # sigma_v^2 floor of 1e-10


@pytest.mark.parametrize("shape", [(33, 47), (64, 64)], ids=["33x47", "64x64"])
def test_ssim_matches_skimage(shape):
    metrics = pytest.importorskip("skimage.metrics")
    a, b = smooth_image(shape, 5), smooth_image(shape, 6, sigma=1.0)
    f = 0.5 * (a + b)

    def wang(x, y):
        return metrics.structural_similarity(
            x, y, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )

    expected = 0.5 * (wang(f, a) + wang(f, b))
    assert score("ssim", a, b, f) == pytest.approx(expected, abs=1e-10)
    assert score("ssim", a, b, f, convention="vifb") == pytest.approx(2 * expected, abs=1e-10)
    # CDDFuse: skimage 0.19 defaults on float input (7x7 uniform, sample covariance, data_range 2), summed
    cdd = metrics.structural_similarity(f, a, data_range=2) + metrics.structural_similarity(f, b, data_range=2)
    assert score("ssim", a, b, f, convention="cddfuse") == pytest.approx(cdd, abs=1e-10)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_ssim_of_identical_images_is_maximal(convention):
    a = smooth_image((40, 50), 7)
    expected = 2.0 if convention in ("cddfuse", "vifb") else 1.0
    assert score("ssim", a, a, a, convention=convention) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("shape", [(161, 170), (200, 257)], ids=["161x170", "200x257-odd"])
def test_ms_ssim_matches_pytorch_msssim(shape):
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    a, b = smooth_image(shape, 8), smooth_image(shape, 9, sigma=1.0)
    f = 0.7 * a + 0.3 * b
    t = lambda x: torch.from_numpy(x)[None, None]  # noqa: E731
    expected = 0.5 * (
        pytorch_msssim.ms_ssim(t(a), t(f), data_range=255) + pytorch_msssim.ms_ssim(t(b), t(f), data_range=255)
    )
    # pytorch_msssim builds its Gaussian window in float32: agreement to ~1e-6
    assert score("ms_ssim", a, b, f) == pytest.approx(float(expected), abs=1e-5)
    assert score("ms_ssim", a, a, a) == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------------------------
# hand-worked cases


def two_level(shape=(8, 10)):
    x = np.zeros(shape)
    x[:, shape[1] // 2 :] = 255.0
    return x


def test_entropy_of_two_level_image_is_one_bit():
    f = two_level()
    assert score("en", f, f, f) == pytest.approx(1.0, abs=1e-12)
    assert score("en", f, f, np.full((8, 10), 7.0)) == 0.0


def test_entropy_rounding_per_convention():
    f = np.array([[0.5, 1.5], [2.5, 3.0]])  # half away: 1, 2, 3, 3; np.round: 0, 2, 2, 3; floor: 0, 1, 2, 3
    h = lambda *p: -sum(q * math.log2(q) for q in p)  # noqa: E731
    assert score("en", f, f, f) == pytest.approx(h(0.25, 0.25, 0.5))
    assert score("en", f, f, f, convention="cddfuse") == pytest.approx(h(0.25, 0.5, 0.25))
    assert score("en", f, f, f, convention="vifb") == pytest.approx(2.0)


def test_sd_population():
    f = np.array([[0.0, 255.0], [0.0, 255.0]])
    assert score("sd", f, f, f) == pytest.approx(127.5)


def test_sf_and_ag_on_a_ramp():
    m, n, c = 6, 9, 3.0
    f = np.tile(c * np.arange(n, dtype=float), (m, 1))  # F(i, j) = c j: row differences c, column 0
    assert score("sf", f, f, f) == pytest.approx(c)
    assert score("sf", f, f, f, convention="vifb") == pytest.approx(c * math.sqrt(m * (n - 1) / (m * n)))
    per_pixel = c / math.sqrt(2.0)  # sqrt((c^2 + 0) / 2); np.gradient is exact on a ramp, borders included
    assert score("ag", f, f, f) == pytest.approx(per_pixel * m * n / ((m - 1) * (n - 1)))
    assert score("ag", f, f, f, convention="matlab") == pytest.approx(per_pixel * m * n / ((m - 1) * (n - 1)))
    assert score("ag", f, f, f, convention="cddfuse") == pytest.approx(per_pixel)


def test_mi_by_hand_and_units():
    a = two_level()
    b = np.full_like(a, 40.0)  # constant: I(B; F) = 0
    bits = score("mi", a, b, a)
    assert bits == pytest.approx(1.0, abs=1e-12)  # I(A; A) = H(A) = 1 bit
    assert score("mi", a, b, a, convention="cddfuse") == pytest.approx(math.log(2.0), abs=1e-12)
    assert score("mi", a, b, a, convention="vifb") == pytest.approx(math.log(2.0), abs=1e-12)


def _mi_by_counting(x, y):
    """I(X; Y) in bits = H(X) + H(Y) - H(X, Y) from value counts (no histogram binning)."""

    def h(*arrays):
        _, counts = np.unique(np.stack([v.ravel() for v in arrays]), axis=1, return_counts=True)
        p = counts / counts.sum()
        return -(p * np.log2(p)).sum()

    return h(x) + h(y) - h(x, y)


def test_mi_matches_counting_and_ln2_ratio(triple):
    a, b, f = (np.floor(x + 0.5) for x in triple)
    expected = _mi_by_counting(a, f) + _mi_by_counting(b, f)
    bits = score("mi", a, b, f)
    assert bits == pytest.approx(expected, rel=1e-12)
    assert score("mi", a, b, f, convention="matlab") == bits
    assert score("mi", a, b, f, convention="cddfuse") / bits == pytest.approx(math.log(2.0), rel=1e-12)


def test_scd_and_cc_constructed():
    rng = np.random.default_rng(10)
    a, b = rng.uniform(0, 255, (30, 40)), rng.uniform(0, 255, (30, 40))
    assert score("scd", a, b, a + b) == pytest.approx(2.0)  # r(F - B, A) + r(F - A, B) = r(A, A) + r(B, B)
    assert score("scd", a, b, a + b, convention="vifb") == pytest.approx(2.0)
    assert score("cc", a, a, a) == pytest.approx(1.0)
    assert score("cc", a, 255.0 - a, a) == pytest.approx(0.0, abs=1e-12)  # (1 + (-1)) / 2
    assert math.isnan(score("cc", a, np.full_like(a, 9.0), a))  # r with a constant image is undefined


def test_psnr_per_convention():
    f = np.full((12, 10), 100.0)
    a, b = f + 10.0, f - 10.0  # MSE(A, F) = MSE(B, F) = 100
    standard = 10 * math.log10(255.0**2 / 100.0)
    assert score("psnr", a, b, f) == pytest.approx(standard)
    assert score("psnr", a, b, f, convention="cddfuse") == pytest.approx(10 * math.log10(100.0**2 / 100.0))
    assert score("psnr", a, b, f, convention="matlab") == pytest.approx(standard + PSNR_TANG_OFFSET_DB)
    assert PSNR_TANG_OFFSET_DB == pytest.approx(48.1308, abs=1e-4)
    m = 10.0 * math.sqrt(f.size) / f.size  # VIFB: ||X - F||_F / (MN), averaged over the two sources
    assert score("psnr", a, b, f, convention="vifb") == pytest.approx(20 * math.log10(255.0 / math.sqrt(m)))
    assert score("psnr", f, f, f) == math.inf


def test_qabf_of_identical_images():
    a = smooth_image((40, 48), 11)
    # with G = 1 where gradients are equal, every edge pixel scores Qg(1) * Qa(1)
    q_g = 0.9994 / (1.0 + math.exp(-15.0 * 0.5))
    q_a = 0.9879 / (1.0 + math.exp(-22.0 * 0.2))
    assert qabf(a, a, a, equal_gradient="one") == pytest.approx(q_g * q_a, rel=1e-12)
    # the published code's quirk G = g_F there: on 0-1 data (g_F < 1) the score drops
    assert score("qabf", a, a, a) > 0.95
    small = a / 255.0
    assert qabf(small, small, small) < 0.9 * qabf(small, small, small, equal_gradient="one")
    with pytest.raises(ValueError, match="equal_gradient"):
        qabf(a, a, a, equal_gradient="yes")


def test_nabf_cases():
    rng = np.random.default_rng(12)
    a = rng.uniform(0, 255, (20, 24))  # every pixel has a non-zero gradient
    assert score("nabf", a, a, a) == 0.0  # no fused gradient exceeds both sources
    # F = 2A: gradient ratio 1/2 and equal angles everywhere, so Nabf = 1 - Q with
    q = math.sqrt(0.9999 / (1.0 + math.exp(0.0)) * 0.9995 / (1.0 + math.exp(-22.0 * 0.5)))
    assert score("nabf", a, a, 2.0 * a) == pytest.approx(1.0 - q, rel=1e-12)
    # Tang 2023 calls nabf(A, B, F) against the signature (F, A, B)
    b, f = rng.uniform(0, 255, (2, 20, 24))
    assert score("nabf", a, b, f, convention="matlab") == score("nabf", b, f, a)


def _qabf_by_loops(a, b, f):
    """Q^AB/F pixel by pixel as its docstring states it (conv2 'same' Sobel, the G = g_F quirk)."""
    from scipy.signal import convolve2d

    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=float)
    ky = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=float)
    edges = []
    for x in (a, b, f):
        sx, sy = convolve2d(x, kx, mode="same"), convolve2d(x, ky, mode="same")
        edges.append((np.hypot(sx, sy), sx, sy))
    (ga, sxa, sya), (gb, sxb, syb), (gf, sxf, syf) = edges
    angle = lambda sx, sy: math.pi / 2 if sx == 0 else math.atan(sy / sx)  # noqa: E731
    num = den = 0.0
    for i in range(f.shape[0]):
        for j in range(f.shape[1]):
            for g, sx, sy in ((ga, sxa, sya), (gb, sxb, syb)):
                if g[i, j] > gf[i, j]:
                    ratio = gf[i, j] / g[i, j]
                elif g[i, j] < gf[i, j]:
                    ratio = g[i, j] / gf[i, j]
                else:
                    ratio = gf[i, j]
                orient = 1 - abs(angle(sx[i, j], sy[i, j]) - angle(sxf[i, j], syf[i, j])) / (math.pi / 2)
                q = 0.9994 / (1 + math.exp(-15 * (ratio - 0.5))) * 0.9879 / (1 + math.exp(-22 * (orient - 0.8)))
                num += q * g[i, j]
                den += g[i, j]
    return num / den


def _nabf_by_loops(f, a, b):
    """Nabf pixel by pixel as its docstring states it (Sobel/8, periodic extension)."""
    from scipy.signal import convolve2d

    hv = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=float) / 8
    grads = []
    for x in (a, b, f):
        ext = np.pad(x, 1, mode="wrap")
        gv, gh = convolve2d(ext, hv, mode="valid"), convolve2d(ext, hv.T, mode="valid")
        ang = np.zeros_like(gv)
        for idx in np.ndindex(gv.shape):
            if gv[idx] != 0 or gh[idx] != 0:
                ang[idx] = math.atan(gv[idx] / gh[idx]) if gh[idx] != 0 else math.copysign(math.pi / 2, gv[idx])
        grads.append((np.hypot(gv, gh), ang))
    (ga, aa), (gb, ab), (gf, af) = grads
    num = den = 0.0
    for idx in np.ndindex(f.shape):
        wa = ga[idx] ** 1.5 if ga[idx] >= 2 else 0.001
        wb = gb[idx] ** 1.5 if gb[idx] >= 2 else 0.001
        den += wa + wb
        if gf[idx] > ga[idx] and gf[idx] > gb[idx]:
            for g, ang, w in ((ga, aa, wa), (gb, ab, wb)):
                ratio = 0.0 if g[idx] == 0 or gf[idx] == 0 else min(g[idx], gf[idx]) / max(g[idx], gf[idx])
                orient = abs(abs(ang[idx] - af[idx]) - math.pi / 2) * 2 / math.pi
                q = math.sqrt(0.9999 / (1 + math.exp(-19 * (ratio - 0.5))) * 0.9995 / (1 + math.exp(-22 * (orient - 0.5))))
                num += (1 - q) * w
    return num / den


@pytest.mark.parametrize("fusion", ["mean", "max", "sharpened"])
def test_qabf_and_nabf_match_pixel_loops(fusion):
    a = smooth_image((21, 26), 20, sigma=1.0)
    b = smooth_image((21, 26), 21, sigma=1.5)
    b[:, :7] = 90.0  # flat region: zero gradients
    f = {"mean": 0.5 * (a + b), "max": np.maximum(a, b), "sharpened": np.clip(1.6 * a - 0.3 * b, 0, 255)}[fusion]
    assert score("qabf", a, b, f) == pytest.approx(_qabf_by_loops(a, b, f), rel=1e-12)
    assert score("nabf", a, b, f) == pytest.approx(_nabf_by_loops(f, a, b), rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------------------------
# FMI


def _window_fmi(x, y):
    """FMI of one window pair, literally as its docstring states it (explicit joint PMF)."""
    if np.array_equal(x, y):
        return 1.0

    def pdf(w):
        v = w.flatten(order="F")
        span = v.max() - v.min()
        v = (v - v.min()) / span if span > 0 else np.ones_like(v)
        return v / v.sum()

    pa, pf = pdf(x), pdf(y)
    k = np.arange(1, pa.size + 1)
    mua, muf = pa @ k, pf @ k
    sda, sdf = math.sqrt(max(pa @ k**2 - mua**2, 0)), math.sqrt(max(pf @ k**2 - muf**2, 0))
    if pa.std() == 0 or pf.std() == 0 or sda == 0 or sdf == 0:
        return 0.0
    c = np.corrcoef(pa, pf)[0, 1]
    ca, cf = np.cumsum(pa), np.cumsum(pf)
    cdf = np.minimum.outer(ca, cf) if c >= 0 else np.maximum(np.add.outer(ca, cf) - 1.0, 0.0)
    cdf = np.pad(cdf, ((1, 0), (1, 0)))
    bound = cdf[1:, 1:] - cdf[:-1, 1:] - cdf[1:, :-1] + cdf[:-1, :-1]
    mix = c / (((np.outer(k, k) * bound).sum() - mua * muf) / (sda * sdf))
    joint = mix * bound + (1.0 - mix) * np.outer(pa, pf)
    h = lambda p: -(p[p > 0] * np.log2(p[p > 0])).sum()  # noqa: E731
    nz = joint != 0
    h_joint = -(joint[nz] * np.log2(np.abs(joint[nz]))).sum()
    return 2.0 * (h(pa) + h(pf) - h_joint) / (h(pa) + h(pf))


def _fmi_by_loops(a, b, f, feature):
    fa, fb, ff = (fmi_feature(x, feature) for x in (a, b, f))
    values = [
        0.5 * (_window_fmi(fa[i : i + 3, j : j + 3], ff[i : i + 3, j : j + 3]) + _window_fmi(fb[i : i + 3, j : j + 3], ff[i : i + 3, j : j + 3]))
        for i in range(ff.shape[0] - 2)
        for j in range(ff.shape[1] - 2)
    ]
    return float(np.mean(values))


@pytest.mark.parametrize(
    "feature, fusion",
    [(feature, fusion) for feature in ("none", "edge", "dct", "gradient") for fusion in ("mean", "max", "inverted")]
    + [("wavelet", "mean")],  # the dmey feature image is large: one case
)
def test_fmi_matches_window_loops(feature, fusion):
    a = smooth_image((19, 23), 13, sigma=1.0)
    b = smooth_image((19, 23), 14, sigma=1.5)
    b[:, :6] = 80.0  # constant patches exercise the degenerate windows
    f = {"mean": 0.5 * (a + b), "max": np.maximum(a, b), "inverted": 255.0 - a}[fusion]
    assert fmi(a, b, f, feature) == pytest.approx(_fmi_by_loops(a, b, f, feature), abs=1e-12)


def test_fmi_of_identical_images_is_one():
    a = smooth_image((20, 20), 15)
    assert evaluate(a, a, a, ["fmi_pixel", "fmi_edge", "fmi_dct"]) == {"fmi_pixel": 1.0, "fmi_edge": 1.0, "fmi_dct": 1.0}


def test_matlab_edge_on_a_step():
    x = np.zeros((9, 12))
    x[:, 6] = 0.5
    x[:, 7:] = 1.0  # Sobel response 0.25, 0.5, 0.25 on columns 5, 6, 7: one ridge, above 4 mean(b)
    edges = matlab_sobel_edges(x)
    assert edges[:, 6].all() and edges.sum() == x.shape[0]


# --------------------------------------------------------------------------------------------
# conventions, colour and real data


def test_convention_relations(triple):
    a, b, f = triple
    m, n = f.shape
    canonical = evaluate(a, b, f, ["ag", "sf", "vif", "qabf", "scd", "cc", "sd"])
    cdd = evaluate(a, b, f, ["ag", "sf", "vif", "qabf", "scd", "cc", "sd"], convention="cddfuse")
    assert cdd["ag"] / canonical["ag"] == pytest.approx((m - 1) * (n - 1) / (m * n))
    for name in ("sf", "vif", "qabf", "scd", "cc", "sd"):
        assert cdd[name] == canonical[name], name
    assert score("sf", a, b, f, convention="vifb") < canonical["sf"]


def test_colour_modes():
    rgb = np.stack([smooth_image((30, 34), s) for s in (16, 17, 18)], axis=-1)
    grey = smooth_image((30, 34), 19)
    fused = 0.5 * (rgb + grey[..., None])
    y = evaluate(rgb, grey, fused, ["sd", "mi"])
    assert y == evaluate(rgb_to_y(rgb), grey, rgb_to_y(fused), ["sd", "mi"])
    per_channel = evaluate(rgb, grey, fused, ["sd"], colour="per_channel")["sd"]
    assert per_channel == pytest.approx(np.mean([np.std(fused[..., c]) for c in range(3)]))
    assert evaluate(rgb, grey, fused, ["sd"], convention="vifb")["sd"] == pytest.approx(per_channel)
    assert evaluate(rgb, grey, fused, ["sd"], convention="vifb", colour="y")["sd"] == pytest.approx(y["sd"])


def _load_grey(path):
    image = pytest.importorskip("PIL.Image")
    with image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float64)


# Scores of the average (A + B) / 2 of two real pairs, pinned to 6 significant digits, so that a
# change to any metric's arithmetic fails here. Regenerate with
#   python -c "from tests.test_metrics import print_real_pair_scores; print_real_pair_scores()"
REAL_PAIRS = {
    "tno": ("tno", "ir", "vi", "10.png"),
    "mri_ct": ("mri_ct", "CT", "MRI", "11.png"),
}
PINNED_AVERAGE_SCORES = {
    "tno": {"vif": 0.851477, "scd": 1.01828, "qabf": 0.43937, "sf": 6.5121, "ms_ssim": 0.872275,
            "fmi_edge": 0.870218, "fmi_pixel": 0.48474, "fmi_dct": 0.408012, "fmi_w": 0.436015, "en": 7.1175,
            "sd": 37.191, "mi": 3.37622, "ag": 2.51386, "ssim": 0.796515, "psnr": 20.5993, "cc": 0.851386,
            "nabf": 0.0},
    "mri_ct": {"vif": 0.445491, "scd": 0.955077, "qabf": 0.37028, "sf": 21.3673, "ms_ssim": 0.658037,
               "fmi_edge": 0.844007, "fmi_pixel": 0.682583, "fmi_dct": 0.428071, "fmi_w": 0.45813, "en": 4.88256,
               "sd": 55.9867, "mi": 3.9668, "ag": 5.73189, "ssim": 0.72128, "psnr": 16.215, "cc": 0.832389,
               "nabf": 0.0},
}  # fmt: skip


def _real_pair(key):
    folder, mod_a, mod_b, name = REAL_PAIRS[key]
    return _load_grey(shared_data(folder, mod_a, name)), _load_grey(shared_data(folder, mod_b, name))


def print_real_pair_scores():
    for key in REAL_PAIRS:
        a, b = _real_pair(key)
        print(f'"{key}":', {k: float(f"{v:.6g}") for k, v in evaluate(a, b, 0.5 * (a + b)).items()})


@pytest.mark.slow
@pytest.mark.parametrize("key", list(REAL_PAIRS))
def test_real_pair_average_fusion_scores_are_pinned(key):
    a, b = _real_pair(key)
    out = evaluate(a, b, 0.5 * (a + b))
    assert list(out) == list(METRICS)
    for name, expected in PINNED_AVERAGE_SCORES[key].items():
        assert out[name] == pytest.approx(expected, rel=2e-5, abs=1e-9), name


@pytest.mark.slow
@pytest.mark.parametrize("key", list(REAL_PAIRS))
def test_real_pair_identities(key):
    """Relations every correct implementation satisfies, on real images."""
    a, b = _real_pair(key)
    avg = evaluate(a, b, 0.5 * (a + b), ["sd", "sf", "ag", "nabf"])
    alone = {name: evaluate(a, b, x, ["sd", "sf", "ag"]) for name, x in (("a", a), ("b", b))}
    for name in ("sd", "sf", "ag"):  # each is a norm, so the average obeys the triangle inequality
        assert avg[name] < 0.5 * (alone["a"][name] + alone["b"][name]), name
    assert avg["nabf"] == 0.0  # the average's gradient never exceeds both sources' gradients
    # fused = one source: the scores reduce to a comparison of the two sources, the same either way round
    names = ["ssim", "ms_ssim", "psnr", "mi", "en", "vif", "nabf", "qabf"]
    as_a, as_b = evaluate(a, b, a, names), evaluate(b, a, b, names)
    for name in ("ssim", "ms_ssim", "psnr"):
        assert as_a[name] == pytest.approx(as_b[name], rel=1e-12), name
    assert 0.5 < as_a["ssim"] < 1.0 and 0.5 < as_a["ms_ssim"] < 1.0  # the mean of 1 (itself) and SSIM(A, B) < 1
    assert as_a["mi"] - as_a["en"] == pytest.approx(as_b["mi"] - as_b["en"], rel=1e-9)  # I(A;B) both ways
    assert as_a["mi"] - as_a["en"] > 0
    assert as_a["vif"] == pytest.approx(1.0 + vif_p(b, a), rel=1e-9) and vif_p(a, a) == pytest.approx(1.0)
    assert as_a["nabf"] == 0.0 and as_b["nabf"] == 0.0
    assert as_a["qabf"] > avg_qabf(a, b) - 0.5 and 0 < as_a["qabf"] < 1


def avg_qabf(a, b):
    return qabf(a, b, 0.5 * (a + b))
