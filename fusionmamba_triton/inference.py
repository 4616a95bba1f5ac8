"""Fusing one image pair of any size and colour with a FusionMamba model.

a is the visible (or MRI / phase-contrast) image, the model's x1; b is the infrared (or CT / PET /
SPECT / GFP) image, the model's x2. At most one of them may be colour: its Y (BT.601) is fused
and its Cb/Cr are put back.
"""
from __future__ import annotations

import contextlib
import numbers
import os
from pathlib import Path

import numpy as np
import torch

from .imaging import crop, pad_to_multiple, rgb_to_ycbcr, run_tiled, ycbcr_to_rgb

COLOUR_SOURCES = ("auto", "a", "b", "none")
SIZE_MULTIPLE = 32
AUTOCAST_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_weights(task: str = "ir-vis") -> Path | None:
    """Folder of the bundled checkpoint registered for `task` (model.TASK_CHECKPOINTS), or None when this
    install lacks its files; a task without bundled weights is a ValueError."""
    from .model import bundled_checkpoint, task_checkpoint

    name = task_checkpoint(task)
    try:
        return Path(bundled_checkpoint(name))
    except FileNotFoundError:
        return None


def bundled_weights(task: str = "ir-vis", preset: str | None = None) -> tuple[Path | None, str]:
    """What load_model(None, preset=preset, task=task) loads: (folder, checkpoint name), or (None, why not).

    The task's bundled checkpoint is used when `preset` is None or the checkpoint's own preset
    (its weights fit no other).
    """
    from .model import bundled_preset, task_checkpoint

    try:
        name = task_checkpoint(task)
    except ValueError as exc:
        return None, str(exc).split(";")[0]
    folder = default_weights(task)
    if folder is None:
        return None, f"the bundled checkpoint {name!r} for {task} is missing from this installation"
    own = bundled_preset(name)
    if preset is not None and preset != own:
        return None, f"there are no bundled weights for preset {preset!r} ({task} ships {name!r}, preset {own!r})"
    return folder, name


def load_model(weights=None, *, preset: str | None = None, device="cpu", backend: str = "auto",
               allow_untrained: bool = False, task: str = "ir-vis"):
    """A FusionMamba in eval mode on `device`, from `weights` (file, save_pretrained folder or training
    checkpoint), else the bundled checkpoint registered for `task` (see bundled_weights).

    Without any weights it raises, unless allow_untrained=True builds a randomly initialised model
    of `preset` (its output is meaningless; for smoke tests only).
    """
    from .model import FusionMamba

    if weights is None:
        weights, missing = bundled_weights(task, preset)
        if weights is None:
            if not allow_untrained:
                raise ValueError(
                    f"no trained weights: {missing}, and an untrained model gives meaningless output; pass --weights "
                    "PATH (e.g. OUT/final from `fusionmamba train`) or use a classical method, e.g. --method average"
                )
            return FusionMamba.from_preset(preset or "base", backend=backend).to(device).eval()
    if not Path(weights).exists():
        raise ValueError(f"{weights}: no such checkpoint file or folder")
    try:
        model = FusionMamba.from_pretrained(weights, preset=preset, map_location="cpu", backend=backend)
    except (ValueError, RuntimeError, OSError, KeyError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(message if str(weights) in message else f"{weights}: {message}") from None
    return model.to(device).eval()


def as_image(x, name: str = "image") -> np.ndarray:
    """Check and convert an image to float32 in [0, 1], shaped (H, W) or (H, W, 3).

    Accepts numpy (H, W), (H, W, 1), (H, W, 3) and torch (H, W), (1, H, W), (3, H, W), as uint8
    (0-255), uint16 (0-65535) or float (0-1; half-precision tensors are widened to float32).
    """
    if isinstance(x, (str, bytes, os.PathLike)):
        raise ValueError(f"{name}: got a file path ({os.fsdecode(x)!r}); fuse takes image arrays: "
                         "read the file first with fusionmamba_triton.imaging.load_image")
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise ValueError(f"{name}: expected a numpy array or torch tensor image, got {type(x).__name__}")
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):  # numpy has no bfloat16
            x = x.float()
        if x.ndim == 3:
            if x.shape[0] not in (1, 3):
                raise ValueError(f"{name}: a (C, H, W) tensor needs C = 1 or 3, got shape {tuple(x.shape)}")
            x = x.permute(1, 2, 0)
        x = x.numpy()
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] != 3):
        raise ValueError(f"{name}: expected a grey (H, W) or colour (H, W, 3) image, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name}: image is empty (shape {x.shape})")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype == np.uint16:
        return x.astype(np.float32) / 65535.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: expected uint8, uint16 or float values, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: image holds NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"{name}: float images must hold values in [0, 1], got [{low:g}, {high:g}] (divide 8-bit data by 255)"
        )
    return x.clip(0, 1)


def split_colour(a, b, colour_source: str = "auto"):
    """Validate a pair and return (y_a, y_b, chroma): grey (H, W) images and the colour source's Cb/Cr.

    colour_source: "auto" (the colour image, if any; both colour is an error), "a" or "b" (that
    image's colour is kept if it has any, the other is reduced to Y), "none" (grey output).
    chroma is (H, W, 2) or None.
    """
    if colour_source not in COLOUR_SOURCES:
        raise ValueError(f"colour_source must be one of {COLOUR_SOURCES}, got {colour_source!r}")
    a, b = as_image(a, "a"), as_image(b, "b")
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"a and b must have the same size, got {a.shape[1]}x{a.shape[0]} and {b.shape[1]}x{b.shape[0]}")
    if colour_source == "auto":
        if a.ndim == 3 and b.ndim == 3:
            raise ValueError(
                "both images are colour; only one may be (pass colour_source='a' or 'b' to choose, or 'none')"
            )
        colour_source = "a" if a.ndim == 3 else "b"
    ya, yb = (rgb_to_ycbcr(x) if x.ndim == 3 else x for x in (a, b))
    source = {"a": ya, "b": yb}.get(colour_source)
    chroma = source[..., 1:] if source is not None and source.ndim == 3 else None
    ya, yb = (y[..., 0] if y.ndim == 3 else y for y in (ya, yb))
    return np.ascontiguousarray(ya), np.ascontiguousarray(yb), chroma


def merge_colour(y: np.ndarray, chroma: np.ndarray | None) -> np.ndarray:
    """Fused Y (H, W) plus the colour source's Cb/Cr -> RGB (H, W, 3), or the grey Y; clipped to [0, 1]."""
    y = np.asarray(y, dtype=np.float32).clip(0, 1)
    if chroma is None:
        return y
    return ycbcr_to_rgb(np.concatenate([y[..., None], chroma], axis=-1)).clip(0, 1).astype(np.float32)


def fuse_luma(fn, a, b, colour_source: str = "auto") -> np.ndarray:
    """Fuse with fn(y_a, y_b) -> y_fused on grey (H, W) float arrays, handling colour as described above."""
    ya, yb, chroma = split_colour(a, b, colour_source)
    return merge_colour(fn(ya, yb), chroma)


def _resolve_autocast(autocast_dtype):
    if isinstance(autocast_dtype, str):
        if autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype must be one of {tuple(AUTOCAST_DTYPES)}, got {autocast_dtype!r}")
        return AUTOCAST_DTYPES[autocast_dtype]
    if autocast_dtype not in (None, torch.float16, torch.bfloat16):
        raise ValueError(f"autocast_dtype must be None, torch.float16 or torch.bfloat16, got {autocast_dtype!r}")
    return autocast_dtype


def check_tiling(tile: int, overlap: int | None, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """Validate a tile size and overlap; returns (tile, overlap) with the default overlap filled in.

    The overlap may be at most half a tile: beyond that every pixel would be computed more than four
    times (tile=32, overlap=31 on 100 x 100 made 97 x 97 tiles).
    """
    if not _is_integer(tile) or tile <= 0 or tile % multiple:
        raise ValueError(f"tile must be a positive multiple of {multiple}, got {tile!r}")
    if overlap is None:
        overlap = min(64, tile // 4)
    if not _is_integer(overlap) or not 0 <= overlap <= tile // 2:
        raise ValueError(f"overlap must be an integer in [0, tile / 2] = [0, {tile // 2}], got {overlap!r} for tile {tile}")
    return int(tile), int(overlap)


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def fuse(
    model: torch.nn.Module,
    a,
    b,
    *,
    colour_source: str = "auto",
    tile: int | None = None,
    overlap: int | None = None,
    autocast_dtype=None,
    device=None,
    progress: bool = True,
) -> np.ndarray:
    """Fuse a (visible / MRI) with b (infrared / CT / PET / SPECT) with `model`; any size, grey or RGB.

    Returns float32 in [0, 1] at the input size: (H, W), or (H, W, 3) when one input is colour.
    The grey images are reflect-padded to a multiple of model.size_multiple (32) and cropped back.

    tile: run the model on overlapping tiles of this size (a multiple of 32) instead of the whole
      image, to bound memory; tiles are blended with raised-cosine weights over `overlap` pixels
      (at most tile / 2; default min(64, tile / 4)). FusionMamba's scans see the whole input, so
      tiled results differ slightly from untiled ones.
    autocast_dtype: None (fp32), torch.float16 / torch.bfloat16 or "fp16" / "bf16" autocast: the matrix
      products and convolutions run in 16 bits, the norms, the scan and the output head in fp32. bf16 runs on
      CPUs (fast with AVX512-BF16 or AMX) and GPUs, fp16 on GPUs only.
    device: where to run; default the model's device (the model is not moved).
    progress: show a bar over the tiles on stderr when a tiled run takes more than 2 seconds.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module such as FusionMamba.from_pretrained('ir-vis-medium') "
                        f"or load_model(...), got {type(model).__name__}")
    autocast_dtype = _resolve_autocast(autocast_dtype)
    multiple = getattr(model, "size_multiple", SIZE_MULTIPLE)
    if tile is not None:
        tile, overlap = check_tiling(tile, overlap, multiple)
    params = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (params.device if params is not None else torch.device("cpu"))
    dtype = params.dtype if params is not None and params.is_floating_point() else torch.float32
    if autocast_dtype == torch.float16 and device.type == "cpu":
        raise ValueError("fp16 autocast needs a GPU; on a CPU use bf16 (autocast_dtype='bf16', --precision bf16)")

    def run_model(ya: np.ndarray, yb: np.ndarray) -> np.ndarray:
        height, width = ya.shape
        x1 = torch.from_numpy(ya)[None, None].to(device=device, dtype=dtype)
        x2 = torch.from_numpy(yb)[None, None].to(device=device, dtype=dtype)
        x1, x2 = pad_to_multiple(x1, multiple), pad_to_multiple(x2, multiple)
        autocast = (
            torch.autocast(device_type=device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            if tile is None:
                y = model(x1, x2).float()
            else:
                y = run_tiled(model, x1, x2, tile, overlap, progress=progress)
        return crop(y, height, width)[0, 0].clamp(0, 1).cpu().numpy()

    was_training = model.training
    model.eval()
    try:
        with frozen(model), torch.inference_mode():
            return fuse_luma(run_model, a, b, colour_source)
    finally:
        model.train(was_training)


def frozen(model: torch.nn.Module):
    """model.frozen() for a FusionMamba (weights taken as constants, see there), else a no-op context."""
    freeze = getattr(model, "frozen", None)
    return freeze() if callable(freeze) else contextlib.nullcontext()
