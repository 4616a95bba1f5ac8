"""Classical fusion baselines: average, max, Laplacian pyramid."""
import numpy as np
import pytest
import torch

from fusionmamba_triton.baselines import BASELINES, collapse_pyramid, get_fuser, laplacian_pyramid
from fusionmamba_triton.imaging import rgb_to_ycbcr


def _pair(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((height, width), dtype=np.float32), rng.random((height, width), dtype=np.float32)


def test_average_and_max():
    a, b = _pair(7, 9)
    np.testing.assert_allclose(get_fuser("average")(a, b), (a + b) / 2, atol=1e-7)
    np.testing.assert_array_equal(get_fuser("max")(a, b), np.maximum(a, b))


@pytest.mark.parametrize("height,width", [(1, 1), (2, 5), (37, 53), (64, 64)], ids=lambda v: str(v))
def test_pyramid_reconstructs_exactly(height, width):
    x = torch.rand(1, 1, height, width, dtype=torch.float64)
    pyramid = laplacian_pyramid(x, levels=4)
    torch.testing.assert_close(collapse_pyramid(pyramid), x)


def test_laplacian_of_identical_images_is_the_image():
    a, _ = _pair(37, 53)
    np.testing.assert_allclose(get_fuser("laplacian")(a, a), a, atol=1e-6)


def test_laplacian_keeps_the_stronger_detail():
    """Against a flat image, the detail of a textured image survives; the base is averaged."""
    a = np.full((64, 64), 0.5, dtype=np.float32)
    a[::2] += 0.2  # fine stripes
    b = np.full((64, 64), 0.3, dtype=np.float32)
    fused = get_fuser("laplacian")(a, b)
    assert abs(fused.mean() - (a.mean() + b.mean()) / 2) < 0.02
    assert np.std(fused) > 0.8 * np.std(a)
    assert np.std(get_fuser("average")(a, b)) < 0.6 * np.std(a)


@pytest.mark.parametrize("name", BASELINES)
def test_colour_source_keeps_chroma_and_size(name):
    rng = np.random.default_rng(1)
    rgb = rng.random((301, 496, 3), dtype=np.float32) * 0.5 + 0.25
    grey = rng.random((301, 496), dtype=np.float32) * 0.5 + 0.25
    fused = get_fuser(name)(grey, rgb)  # b is the colour source (e.g. PET)
    assert fused.shape == (301, 496, 3) and fused.dtype == np.float32
    inside = ((fused > 0) & (fused < 1)).all(axis=-1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(rgb_to_ycbcr(fused)[inside][:, 1:], rgb_to_ycbcr(rgb)[inside][:, 1:], atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="unknown fusion method"):
        get_fuser("wavelet")
    a, _ = _pair(8, 8)
    with pytest.raises(ValueError, match="same size"):
        get_fuser("laplacian")(a, a[:7])
