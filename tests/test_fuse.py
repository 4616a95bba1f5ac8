"""fuse(): any size, grey or colour, tiles, and clear errors for bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusionmamba_triton import imaging, inference
from fusionmamba_triton.inference import fuse, load_model, split_colour
from fusionmamba_triton.imaging import rgb_to_grey, rgb_to_ycbcr
from fusionmamba_triton.model import FusionMamba
from tests.helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


class MeanModel(torch.nn.Module):
    """Stand-in with FusionMamba's call shape whose output is easy to predict: (x1 + x2) / 2."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x1, x2):
        assert x1.shape[-2] % 32 == 0 and x1.shape[-1] % 32 == 0
        return self.scale * (x1 + x2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FusionMamba(**TINY).eval()


# fuse runs the model frozen (oneDNN matrix products with packed weights on a CPU): the same as a plain call up to
# summation order
FROZEN_ATOL = 1e-4


def _images(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((height, width), dtype=np.float32), rng.random((height, width), dtype=np.float32)


def _model_output(model, a, b):
    """The model on (1, 1, H, W) tensors of a and b, clipped to [0, 1]: (H, W) numpy."""
    with torch.no_grad():
        y = model(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])
    return y.clamp(0, 1)[0, 0].numpy()


@pytest.mark.parametrize("height,width", [(1, 1), (45, 77), (64, 32)], ids=lambda v: str(v))
def test_grey_pair_is_padded_by_reflection_and_cropped_back(model, height, width):
    a, b = _images(height, width)
    fused = fuse(model, a, b)
    assert fused.shape == (height, width) and fused.dtype == np.float32
    # what fuse promises: reflect-pad bottom/right to a multiple of 32, run, crop (a 1 x 1 image is replicated)
    pad_h, pad_w = -height % 32, -width % 32
    mode = "replicate" if height == 1 else "reflect"
    padded = [F.pad(torch.from_numpy(x)[None, None], (0, pad_w, 0, pad_h), mode=mode)[0, 0].numpy() for x in (a, b)]
    expected = _model_output(model, *padded)[:height, :width]
    np.testing.assert_allclose(fused, expected, atol=FROZEN_ATOL)


def test_matches_padded_model_call(model):
    a, b = _images(32, 64)
    with torch.no_grad():
        expected = model(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]).clamp(0, 1)[0, 0].numpy()
    np.testing.assert_allclose(fuse(model, a, b), expected, atol=FROZEN_ATOL)


def test_colour_visible_301x496_keeps_size_and_chroma():
    rng = np.random.default_rng(1)
    a = rng.random((301, 496, 3), dtype=np.float32) * 0.5 + 0.25
    b = rng.random((301, 496), dtype=np.float32)
    fused = fuse(MeanModel(), a, b)
    assert fused.shape == (301, 496, 3)
    fused_ycbcr, a_ycbcr = rgb_to_ycbcr(fused), rgb_to_ycbcr(a)
    inside = ((fused > 0) & (fused < 1)).all(axis=-1)  # exact where the RGB was not clipped
    assert inside.mean() > 0.5
    np.testing.assert_allclose(fused_ycbcr[inside][:, 0], ((a_ycbcr[..., 0] + b) / 2)[inside], atol=1e-5)
    np.testing.assert_allclose(fused_ycbcr[inside][:, 1:], a_ycbcr[inside][:, 1:], atol=1e-5)


def test_real_model_on_colour_pair_fuses_y_and_keeps_chroma(model):
    # dark inputs: the untrained model's output, head + 2 (x1 + x2), stays mostly inside [0, 1]
    a = np.random.default_rng(8).random((37, 50, 3), dtype=np.float32) * 0.1 + 0.05
    b = np.random.default_rng(9).random((37, 50), dtype=np.float32) * 0.1
    fused = fuse(model, a, b)
    assert fused.shape == (37, 50, 3) and fused.dtype == np.float32
    grey = fuse(model, rgb_to_grey(a), b)  # the same model on a's luma
    inside = ((fused > 0) & (fused < 1)).all(axis=-1)  # exact where the RGB was not clipped
    assert inside.mean() > 0.3
    np.testing.assert_allclose(rgb_to_ycbcr(fused)[..., 0][inside], grey[inside], atol=1e-5)
    np.testing.assert_allclose(rgb_to_ycbcr(fused)[..., 1:][inside], rgb_to_ycbcr(a)[..., 1:][inside], atol=1e-5)


def test_colour_b_is_the_colour_source(model):
    a, _ = _images(32, 32)
    pet = np.random.default_rng(2).random((32, 32, 3), dtype=np.float32) * 0.5 + 0.25
    mean = MeanModel()
    expected_y = (a + rgb_to_grey(pet)) / 2
    fused = fuse(mean, a, pet)  # auto: the colour image, b, gives the colour
    inside = ((fused > 0) & (fused < 1)).all(axis=-1)  # exact where the RGB was not clipped
    assert inside.mean() > 0.9
    np.testing.assert_allclose(rgb_to_ycbcr(fused)[..., 0][inside], expected_y[inside], atol=1e-5)
    np.testing.assert_allclose(rgb_to_ycbcr(fused)[..., 1:][inside], rgb_to_ycbcr(pet)[..., 1:][inside], atol=1e-5)
    np.testing.assert_allclose(fuse(mean, a, pet, colour_source="none"), expected_y, atol=1e-6)
    np.testing.assert_allclose(fuse(mean, a, pet, colour_source="a"), expected_y, atol=1e-6)  # a has no colour to keep
    assert fuse(model, a, pet).shape == (32, 32, 3)


def test_input_formats_agree(model):
    a8 = (np.random.default_rng(3).random((33, 40, 3)) * 255).astype(np.uint8)
    b8 = (np.random.default_rng(4).random((33, 40)) * 255).astype(np.uint8)
    reference = fuse(model, a8, b8)
    as_float = fuse(model, a8 / np.float32(255), b8[..., None] / np.float32(255))
    as_tensor = fuse(model, torch.from_numpy(a8).permute(2, 0, 1), torch.from_numpy(b8)[None])
    np.testing.assert_allclose(as_float, reference, atol=1e-6)
    np.testing.assert_allclose(as_tensor, reference, atol=1e-6)


def test_both_colour_needs_a_choice(model):
    rgb = np.random.default_rng(5).random((32, 32, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="both images are colour"):
        fuse(model, rgb, rgb)
    assert fuse(model, rgb, rgb, colour_source="b").shape == (32, 32, 3)


@pytest.mark.parametrize(
    "a,b,match",
    [
        (np.zeros((32, 32)), np.zeros((32, 33)), "same size"),
        (np.zeros((32, 32, 4)), np.zeros((32, 32)), "shape"),
        (np.zeros((32, 32, 2)), np.zeros((32, 32)), "shape"),
        (torch.zeros(2, 32, 32), torch.zeros(1, 32, 32), "C = 1 or 3"),
        (np.zeros((0, 32)), np.zeros((0, 32)), "empty"),
        (np.full((32, 32), np.nan), np.zeros((32, 32)), "NaN"),
        (np.full((32, 32), 200.0), np.zeros((32, 32)), r"\[0, 1\]"),
        (np.zeros((32, 32), dtype=np.int32), np.zeros((32, 32)), "dtype"),
        (np.zeros((2, 32, 32)), np.zeros((2, 32, 32)), "shape"),
        ("visible.png", np.zeros((32, 32)), "file path.*load_image"),
        (None, np.zeros((32, 32)), "numpy array or torch tensor"),
        (torch.zeros(32, 32, dtype=torch.bool), np.zeros((32, 32)), "uint8, uint16 or float"),
        (torch.zeros(32, 32, dtype=torch.complex64), np.zeros((32, 32)), "uint8, uint16 or float"),
    ],
    ids=["size-mismatch", "4-channels", "2-channels", "tensor-2-channels", "empty", "nan", "0-255-float", "int32",
         "chw-numpy", "path", "none", "bool-tensor", "complex-tensor"],
)
def test_rejects_bad_input(model, a, b, match):
    with pytest.raises(ValueError, match=match):
        fuse(model, a, b)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tile=48), "multiple of 32"),
        (dict(tile=64.0), "multiple of 32"),
        (dict(tile=64, overlap=64), "overlap"),
        (dict(tile=32, overlap=17), r"overlap must be an integer in \[0, tile / 2\] = \[0, 16\]"),
        (dict(tile=64, overlap=-1), "overlap"),
        (dict(colour_source="c"), "colour_source"),
        (dict(autocast_dtype="fp8"), "autocast_dtype"),
    ],
    ids=["tile", "float-tile", "overlap", "overlap-above-half", "negative-overlap", "colour-source", "dtype"],
)
def test_rejects_bad_options(model, kwargs, match):
    a, b = _images(32, 32)
    with pytest.raises(ValueError, match=match):
        fuse(model, a, b, **kwargs)


def test_model_must_be_a_module():
    a, b = _images(32, 32)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module.*got NoneType"):
        fuse(None, a, b)


def test_half_precision_tensors_are_accepted(model):
    a, b = _images(33, 40)
    reference = fuse(model, a, b)
    for dtype in (torch.bfloat16, torch.float16):
        a_half, b_half = torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype)
        expected = fuse(model, a_half.float().numpy(), b_half.float().numpy())  # the same rounded inputs
        np.testing.assert_array_equal(fuse(model, a_half, b_half), expected)
        assert np.abs(expected - reference).max() < 0.05


class CountingModel(MeanModel):
    """MeanModel that records the shape of every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x1, x2):
        self.calls.append(tuple(x1.shape[-2:]))
        return super().forward(x1, x2)


@pytest.mark.parametrize("size,tile,overlap,per_axis", [(100, 32, 16, 7), (100, 32, None, 5), (100, 64, 32, 3),
                                                        (64, 64, 32, 1)],
                         ids=["half-tile-overlap", "default-overlap", "64-32", "one-tile"])
def test_tile_count_follows_tile_and_overlap(size, tile, overlap, per_axis):
    """Padded to 128 (or 64): tiles start every tile - overlap pixels; the default overlap is tile / 4 here."""
    counting = CountingModel()
    a, b = _images(size, size, seed=3)
    fused = fuse(counting, a, b, tile=tile, overlap=overlap)
    assert len(counting.calls) == per_axis**2 and set(counting.calls) == {(tile, tile)}
    np.testing.assert_allclose(fused, (a + b) / 2, atol=1e-6)  # blending is exact for a pixel-wise model


def test_tiles_close_to_whole_image_but_not_identical(model):
    a, b = _images(40, 70, seed=6)  # padded to 64 x 96: two 64 x 64 tiles, overlapping by 32
    whole = fuse(model, a, b)
    tiled = fuse(model, a, b, tile=64, overlap=32)
    assert tiled.shape == whole.shape
    difference = np.abs(tiled - whole)
    assert 0 < difference.max() and difference.mean() < 0.005, (difference.mean(), difference.max())


def test_tiled_fusion_shows_progress(monkeypatch):
    bars = []
    real_tqdm = imaging.tqdm

    def recording_tqdm(*args, **kwargs):
        bars.append(kwargs)
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr(imaging, "tqdm", recording_tqdm)
    a, b = _images(100, 100)
    fuse(MeanModel(), a, b, tile=32, overlap=16)
    fuse(MeanModel(), a, b, tile=32, overlap=16, progress=False)
    fuse(MeanModel(), a, b)  # untiled: no bar
    assert [(bar["total"], bar["disable"]) for bar in bars] == [(49, False), (49, True)]
    assert bars[0]["delay"] > 0  # quick runs stay silent


def test_tiles_are_exact_for_a_pixelwise_model():
    a, b = _images(80, 90, seed=6)
    np.testing.assert_allclose(fuse(MeanModel(), a, b, tile=64, overlap=16), fuse(MeanModel(), a, b), atol=1e-6)


def test_restores_training_mode_and_needs_no_grad(model):
    model.train()
    try:
        a, b = _images(32, 32)
        fuse(model, a, b)
        assert model.training
    finally:
        model.eval()


def test_bf16_autocast_runs(model):
    a, b = _images(32, 32)
    fused = fuse(model, a, b, autocast_dtype="bf16")
    assert fused.dtype == np.float32
    difference = np.abs(fused - fuse(model, a, b))
    assert 0 < difference.max() and difference.mean() < 0.02  # bf16 really ran, and stayed close


def test_fp16_autocast_on_cpu_is_refused_with_the_alternative(model):
    a, b = _images(32, 32)
    with pytest.raises(ValueError, match="fp16 autocast needs a GPU.*bf16"):
        fuse(model, a, b, autocast_dtype="fp16")


def test_under_bf16_autocast_norms_scan_and_head_stay_fp32(model):
    """The precision policy: matmuls and convolutions in bf16, LayerNorm outputs, the scan and the head in fp32."""
    seen = {}

    def record(name):
        return lambda module, inputs, output: seen.setdefault(name, set()).add(output.dtype)

    hooks = [m.register_forward_hook(record(type(m).__name__)) for m in model.modules()
             if type(m).__name__ in ("LayerNorm", "Linear")]
    try:
        x = torch.rand(1, 1, 32, 32)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, x)
    finally:
        for h in hooks:
            h.remove()
    assert seen["LayerNorm"] == {torch.float32} and seen["Linear"] == {torch.bfloat16}
    assert out.dtype == torch.float32  # the head runs in fp32 and adds 2 (x1 + x2) in fp32


def test_split_colour_gives_y_and_chroma():
    rgb = np.random.default_rng(7).random((5, 6, 3), dtype=np.float32)
    ya, yb, chroma = split_colour(rgb, rgb[..., 0])
    np.testing.assert_allclose(ya, rgb_to_ycbcr(rgb)[..., 0], atol=1e-6)
    assert chroma.shape == (5, 6, 2) and yb.shape == (5, 6)


def test_load_model_errors(tmp_path, model, monkeypatch):
    monkeypatch.setattr(inference, "default_weights", lambda task="ir-vis": None)  # an install without the bundled weights
    with pytest.raises(ValueError, match="--weights"):
        load_model(None)
    with pytest.raises(ValueError, match="missing.safetensors"):
        load_model(tmp_path / "missing.safetensors")
    torch.manual_seed(0)
    FusionMamba(**{**TINY, "dims": [24, 48, 96, 192], "dims_decoder": [192, 96, 48, 24]}).save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match="wide"):
        load_model(tmp_path / "wide", preset="small")
    model.save_pretrained(tmp_path / "tiny")
    loaded = load_model(tmp_path / "tiny")
    a, b = _images(32, 32)
    np.testing.assert_array_equal(fuse(loaded, a, b), fuse(model, a, b))
