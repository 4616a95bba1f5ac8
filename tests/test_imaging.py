"""Image IO, BT.601 conversion, padding and tiling helpers."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fusionmamba_triton import imaging
from fusionmamba_triton.imaging import (
    blend_window,
    crop,
    load_image,
    max_image_pixels,
    pad_to_multiple,
    rgb_to_grey,
    rgb_to_ycbcr,
    run_tiled,
    sample_pair,
    save_image,
    set_max_image_pixels,
    tile_starts,
    ycbcr_to_rgb,
)
from tests.helpers import write_bomb_png


def _rng():
    return np.random.default_rng(0)


def test_load_grey_and_colour_png(tmp_path):
    grey = (_rng().random((13, 21)) * 255).astype(np.uint8)
    rgb = (_rng().random((13, 21, 3)) * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "grey.png"), grey / np.float32(255))
    loaded = load_image(tmp_path / "rgb.png")
    assert loaded.shape == (13, 21, 3) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, rgb / np.float32(255))


@pytest.mark.parametrize("mode", ["RGB", "P"])
def test_grey_stored_as_rgb_or_palette_loads_grey(tmp_path, mode):
    grey = (_rng().random((9, 11)) * 255).astype(np.uint8)
    image = Image.fromarray(np.stack([grey] * 3, axis=-1))
    image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256) if mode == "P" else image
    image.save(tmp_path / "x.png")
    loaded = load_image(tmp_path / "x.png")
    assert loaded.shape == (9, 11)
    expected = np.asarray(image.convert("L")) / np.float32(255)
    np.testing.assert_array_equal(loaded, expected)


def test_load_16_bit_png(tmp_path):
    data = (_rng().random((7, 5)) * 65535).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "deep.png")
    np.testing.assert_allclose(load_image(tmp_path / "deep.png"), data / 65535.0, atol=1e-6)


def test_load_missing_or_corrupt_file_names_it(tmp_path):
    with pytest.raises(ValueError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(tmp_path / "bad.png")


def test_decompression_bomb_is_a_value_error_saying_how_to_allow_it(tmp_path):
    write_bomb_png(tmp_path / "bomb.png")  # declares 900 M pixels
    with pytest.raises(ValueError, match=r"bomb.png: .*900000000 pixels.*--max-pixels.*--tile") as info:
        load_image(tmp_path / "bomb.png")
    assert len(str(info.value).splitlines()) == 1


def test_max_image_pixels_is_the_limit_load_image_applies(tmp_path, pillow_limit):
    assert max_image_pixels() == 2 * Image.MAX_IMAGE_PIXELS  # Pillow's default refusal limit
    save_image(tmp_path / "img.png", np.zeros((10, 11)))
    set_max_image_pixels(108)
    assert max_image_pixels() == 108
    with pytest.raises(ValueError, match="img.png: Image size \\(110 pixels\\)"):
        load_image(tmp_path / "img.png")
    set_max_image_pixels(110)
    assert load_image(tmp_path / "img.png").shape == (10, 11)
    set_max_image_pixels(None)
    assert max_image_pixels() is None
    with pytest.raises(ValueError, match="positive"):
        set_max_image_pixels(0)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_save_round_trip_is_exact_for_8_bit(tmp_path, suffix):
    rgb = (_rng().random((6, 10, 3)) * 255).astype(np.uint8)
    save_image(tmp_path / f"out{suffix}", rgb / 255.0)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"out{suffix}")), rgb)
    assert os.listdir(tmp_path) == [f"out{suffix}"]


def test_save_failure_leaves_no_file(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown image format"):
        save_image(tmp_path / "out.xyz", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        save_image(tmp_path / "out.png", np.full((4, 4), np.nan))

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(tmp_path / "out.png", np.zeros((4, 4)))
    assert os.listdir(tmp_path) == []


def test_ycbcr_matches_pil_and_round_trips():
    rgb = (_rng().random((8, 9, 3)) * 255).astype(np.uint8)
    ours = rgb_to_ycbcr(rgb / np.float32(255)) * 255
    pil = np.asarray(Image.fromarray(rgb).convert("YCbCr"), dtype=np.float64)
    assert np.abs(ours - pil).max() <= 1.0  # PIL rounds in integer arithmetic
    x = _rng().random((5, 4, 3))
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-12)
    torch_out = rgb_to_ycbcr(torch.from_numpy(x))
    np.testing.assert_allclose(torch_out.numpy(), rgb_to_ycbcr(x), atol=1e-12)


def test_luma_is_bt601_y_in_numpy_and_torch():
    x = _rng().random((5, 4, 3))
    expected = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    np.testing.assert_allclose(rgb_to_grey(x), expected, atol=1e-12)
    np.testing.assert_allclose(rgb_to_grey(x * 255), expected * 255, atol=1e-9)  # scale-free: metrics use 0-255
    np.testing.assert_allclose(rgb_to_grey(x), rgb_to_ycbcr(x)[..., 0], atol=1e-12)
    np.testing.assert_allclose(rgb_to_grey(torch.from_numpy(x)).numpy(), expected, atol=1e-12)
    as_uint8 = (x * 255).astype(np.uint8)
    np.testing.assert_allclose(rgb_to_grey(torch.from_numpy(as_uint8)).numpy(), rgb_to_grey(as_uint8), atol=1e-4)
    assert rgb_to_grey(x.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="3 channels"):
        rgb_to_grey(x[..., :2])


@pytest.mark.parametrize("height,width", [(1, 1), (2, 3), (5, 7), (33, 65), (301, 496)], ids=lambda v: str(v))
def test_pad_to_multiple_and_crop(height, width):
    x = torch.rand(1, 2, height, width)
    padded = pad_to_multiple(x, 32)
    assert padded.shape[-2] % 32 == 0 and padded.shape[-1] % 32 == 0
    assert padded.shape[-2] - height < 32 and padded.shape[-1] - width < 32
    torch.testing.assert_close(crop(padded, height, width), x, rtol=0, atol=0)


def test_pad_is_reflection_when_possible():
    x = torch.rand(1, 1, 40, 50)
    expected = F.pad(x, (0, 14, 0, 24), mode="reflect")
    torch.testing.assert_close(pad_to_multiple(x, 32), expected, rtol=0, atol=0)


@pytest.mark.parametrize("length,tile,overlap", [(64, 64, 16), (100, 64, 16), (320, 96, 32), (97, 32, 8)])
def test_tile_starts_cover_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and min(length, starts[-1] + tile) == length
    for s0, s1 in zip(starts, starts[1:]):
        assert s0 + tile - s1 >= overlap


def test_blend_window_is_a_positive_raised_cosine():
    w = blend_window(64, 16, True, True)
    assert (w > 0).all() and w.max() == 1
    torch.testing.assert_close(w[:16] + w[:16].flip(0), torch.ones(16, dtype=torch.float64))
    assert (blend_window(64, 16, False, False) == 1).all()


def test_run_tiled_is_exact_for_a_local_function():
    x1, x2 = torch.rand(1, 1, 96, 160), torch.rand(1, 1, 96, 160)
    out = run_tiled(lambda a, b: a + 2 * b, x1, x2, tile=64, overlap=32)
    torch.testing.assert_close(out, x1 + 2 * x2)


def test_sample_pairs_exist_and_match():
    for name in imaging.SAMPLE_PAIRS:
        a, b = sample_pair(name)
        assert load_image(a).shape == load_image(b).shape
    with pytest.raises(ValueError, match="unknown sample pair"):
        sample_pair("nope")
    total = sum(p.stat().st_size for p in imaging.SAMPLES_DIR.rglob("*") if p.is_file())
    assert total < 1.5e6
