"""Image IO, BT.601 colour conversion, padding to the model's size multiple, and tiling.

Images are float32 numpy arrays in [0, 1]: grey (H, W) or RGB (H, W, 3). Tensors at the model
boundary are (B, C, H, W).
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .files import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SAMPLES_DIR = Path(__file__).parent / "assets" / "samples"
# name -> (a, b) file names under SAMPLES_DIR; a is the visible / MRI image, b the infrared / other one.
SAMPLE_PAIRS = {
    "tno_05": ("tno/vi/05.png", "tno/ir/05.png"),
    "tno_15": ("tno/vi/15.png", "tno/ir/15.png"),
    "itk_brain": ("itk_brain/BrainT1Slice.png", "itk_brain/BrainProtonDensitySlice.png"),
}

# JPEG / PIL full-range BT.601. Chroma is centred on 128/255 so that 255 * value matches PIL's "YCbCr".
_CHROMA_OFFSET = 128.0 / 255.0
_RGB_TO_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float64
)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)


def sample_pair(name: str) -> tuple[Path, Path]:
    """Paths (a, b) of a bundled sample pair: "tno_05", "tno_15" (visible, infrared) or "itk_brain" (T1, PD)."""
    if name not in SAMPLE_PAIRS:
        raise ValueError(f"unknown sample pair {name!r}; choose from {sorted(SAMPLE_PAIRS)}")
    return tuple(SAMPLES_DIR / rel for rel in SAMPLE_PAIRS[name])


def max_image_pixels() -> int | None:
    """The most pixels load_image reads (None: no limit): Pillow's decompression-bomb limit, about 179 M by default."""
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def set_max_image_pixels(pixels: int | None) -> None:
    """Let load_image read images of up to `pixels` pixels (None: any size), for the whole process.

    Pillow refuses images above about 179 M pixels by default, so that a small file that declares
    a huge size cannot exhaust memory. Raise the limit only for images you trust, and fuse them in
    tiles (fuse(..., tile=512)) to bound the model's memory. Pillow stores half the limit, so an
    odd `pixels` is rounded up to the next even number.
    """
    if pixels is not None and pixels < 1:
        raise ValueError(f"the pixel limit must be positive or None, got {pixels}")
    # Pillow errors above 2 * MAX_IMAGE_PIXELS and warns above MAX_IMAGE_PIXELS; the limit set here replaces both.
    Image.MAX_IMAGE_PIXELS = None if pixels is None else (pixels + 1) // 2
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as float32 in [0, 1]: (H, W) if grey, (H, W, 3) if colour.

    RGB or palette files whose three channels are identical come back grey; 16-bit files are
    scaled by 1/65535; an alpha channel is dropped. Images above max_image_pixels() are refused
    (see set_max_image_pixels).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                data = np.asarray(im, dtype=np.float64)
                scale = 65535.0 if im.mode.startswith("I;16") or data.max(initial=0) > 255 else 255.0
                return (data / scale).clip(0, 1).astype(np.float32)
            if im.mode == "F":
                data = np.asarray(im, dtype=np.float32)
                return data.clip(0, 1)
            if im.mode in ("1", "L", "LA"):
                data = np.asarray(im.convert("L"))
            else:
                data = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for truncated / unknown files
        raise ValueError(f"{path}: cannot read image ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: {exc} If the image is genuine, raise the limit with --max-pixels "
                         "(in Python: imaging.set_max_image_pixels) and fuse it in tiles (--tile 512)") from None
    if data.size == 0:
        raise ValueError(f"{path}: image is empty")
    image = data.astype(np.float32) / 255.0
    if image.ndim == 3 and _channels_equal(image):
        image = np.ascontiguousarray(image[..., 0])
    return image


def _channels_equal(image: np.ndarray) -> bool:
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a (H, W) or (H, W, 3) image (float in [0, 1] or uint8) atomically; the format follows the suffix.

    The image is written to a temporary file in the same folder, then renamed over `path`, so a
    failure never leaves a partial file.
    """
    path = Path(path)
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or image.size == 0:
        raise ValueError(f"{path}: expected a non-empty (H, W) or (H, W, 3) image, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.asarray(image, dtype=np.float64)
        if not np.isfinite(image).all():
            raise ValueError(f"{path}: image holds NaN or infinite values")
        image = np.rint(image.clip(0, 1) * 255.0).astype(np.uint8)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image format {path.suffix!r}; use one of {', '.join(IMAGE_EXTENSIONS)}")
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format=fmt))


def rgb_to_ycbcr(rgb):
    """BT.601 full-range RGB -> YCbCr on the last axis (numpy or torch, values in [0, 1])."""
    return _apply_matrix(rgb, _RGB_TO_YCBCR, offset_in=0.0, offset_out=_CHROMA_OFFSET)


def ycbcr_to_rgb(ycbcr):
    """Inverse of rgb_to_ycbcr (not clipped)."""
    return _apply_matrix(ycbcr, _YCBCR_TO_RGB, offset_in=_CHROMA_OFFSET, offset_out=0.0)


def _apply_matrix(x, matrix: np.ndarray, offset_in: float, offset_out: float):
    if x.shape[-1] != 3:
        raise ValueError(f"expected 3 channels on the last axis, got shape {tuple(x.shape)}")
    offsets_in = np.array([0.0, offset_in, offset_in])
    offsets_out = np.array([0.0, offset_out, offset_out])
    if isinstance(x, torch.Tensor):
        m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device)
        return (x - torch.as_tensor(offsets_in, dtype=x.dtype, device=x.device)) @ m.T + torch.as_tensor(
            offsets_out, dtype=x.dtype, device=x.device
        )
    x = np.asarray(x)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    return ((x.astype(np.float64) - offsets_in) @ matrix.T + offsets_out).astype(dtype)


def rgb_to_grey(rgb):
    """Luma Y (BT.601 full range, the Y of rgb_to_ycbcr) of an (..., 3) image, numpy or torch: (...).

    The package's one luma function: the fusion, the training loader and the metrics all use it.
    Scale-free, so it works on [0, 1] and on 0-255 data alike.
    """
    if rgb.shape[-1] != 3:
        raise ValueError(f"expected 3 channels on the last axis, got shape {tuple(rgb.shape)}")
    weights = _RGB_TO_YCBCR[0]
    if isinstance(rgb, torch.Tensor):
        rgb = rgb if rgb.is_floating_point() else rgb.float()
        return rgb @ torch.as_tensor(weights, dtype=rgb.dtype, device=rgb.device)
    rgb = np.asarray(rgb)
    dtype = rgb.dtype if np.issubdtype(rgb.dtype, np.floating) else np.float32
    return (rgb.astype(np.float64) @ weights).astype(dtype)


def pad_to_multiple(x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom and right to multiples of `multiple` by reflection; undo with crop(y, H, W)."""
    return reflect_pad(x, -x.shape[-2] % multiple, -x.shape[-1] % multiple)


def reflect_pad(x: torch.Tensor, bottom: int, right: int) -> torch.Tensor:
    """Reflect-pad (B, C, H, W) by `bottom` rows and `right` columns, even when that exceeds H or W.

    torch's reflection needs pad < size, so small images are reflected repeatedly; a side of one
    pixel is replicated.
    """
    for dim, missing in ((2, bottom), (3, right)):
        while missing > 0:
            step = min(missing, x.shape[dim] - 1)
            pad = [0, 0, 0, 0]
            pad[1 if dim == 3 else 3] = step if step > 0 else missing
            x = F.pad(x, pad, mode="reflect" if step > 0 else "replicate")
            missing -= pad[1 if dim == 3 else 3]
    return x


def crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Top-left (height, width) window of (..., H, W): the inverse of pad_to_multiple."""
    return x[..., :height, :width]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length) with at least `overlap` shared pixels."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    starts = [min(i * stride, length - tile) for i in range(count)]
    return sorted(set(starts))


def blend_window(length: int, ramp: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D weights: 1 in the middle, raised-cosine ramps of `ramp` pixels at the ends that overlap a neighbour."""
    w = torch.ones(length, dtype=torch.float64)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        rise = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp)
        if ramp_start:
            w[:ramp] = rise
        if ramp_end:
            w[length - ramp :] = rise.flip(0)
    return w


def run_tiled(fn, x1: torch.Tensor, x2: torch.Tensor, tile: int, overlap: int, progress: bool = False) -> torch.Tensor:
    """Apply fn(x1_tile, x2_tile) -> (B, C, t, t) over overlapping tiles of (B, 1, H, W) inputs and blend.

    Weights are raised-cosine ramps over the overlaps, so seams are smooth. Outputs differ from
    one whole-image call wherever fn looks at the whole image (FusionMamba's scans do).
    progress: show a bar over the tiles on stderr once the run has taken more than 2 seconds.
    """
    height, width = x1.shape[-2:]
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    out = weight_sum = None
    bar = tqdm(total=len(ys) * len(xs), desc="tiles", unit="tile", delay=2.0, leave=False, disable=not progress)
    with bar:
        for y in ys:
            th = min(tile, height - y)
            wy = blend_window(th, overlap, y > 0, y + th < height)
            for x in xs:
                tw = min(tile, width - x)
                wx = blend_window(tw, overlap, x > 0, x + tw < width)
                piece = fn(x1[..., y : y + th, x : x + tw], x2[..., y : y + th, x : x + tw]).float()
                if out is None:
                    out = piece.new_zeros(piece.shape[:-2] + (height, width))
                    weight_sum = piece.new_zeros((height, width))
                w = (wy[:, None] * wx[None, :]).to(piece)
                out[..., y : y + th, x : x + tw] += piece * w
                weight_sum[y : y + th, x : x + tw] += w
                bar.update()
    return out / weight_sum
