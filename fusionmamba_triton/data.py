"""Paired image folders, fusion tasks and the training dataset.

Pairs are matched by file-name stem: a_dir/00012.png goes with b_dir/00012.jpg.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .imaging import IMAGE_EXTENSIONS, load_image, reflect_pad, rgb_to_grey


@dataclasses.dataclass(frozen=True)
class Task:
    """A fusion task: folder names that hold its a / b images, and which of them carries colour."""

    name: str
    a_names: tuple[str, ...]
    b_names: tuple[str, ...]
    colour_source: str  # "a" or "b": whose Cb/Cr the fused image keeps


# a is the model's x1 (visible / structural), b its x2 (infrared / functional).
TASKS = {
    "ir-vis": Task("ir-vis", ("vi", "vis", "visible", "rgb"), ("ir", "lwir", "infrared", "thermal"), "a"),
    "ct-mri": Task("ct-mri", ("mri",), ("ct",), "b"),
    "pet-mri": Task("pet-mri", ("mri",), ("pet",), "b"),
    "spect-mri": Task("spect-mri", ("mri",), ("spect",), "b"),
    "gfp-pc": Task("gfp-pc", ("pc", "phase", "phase_contrast"), ("gfp",), "b"),
}


def list_images(folder: str | Path) -> dict[str, Path]:
    """Image files directly inside `folder`, keyed by stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
            if path.stem in images:
                raise ValueError(f"{folder}: two images share the name {path.stem!r} ({images[path.stem].name}, {path.name})")
            images[path.stem] = path
    return images


def find_pairs(a_dir: str | Path, b_dir: str | Path) -> tuple[list[tuple[str, Path, Path]], list[Path]]:
    """Match images of two folders by stem.

    Returns ([(stem, a_path, b_path), ...] sorted by stem, [files without a partner]). Raises
    ValueError if a folder is missing or no pair matches.
    """
    a_images, b_images = list_images(a_dir), list_images(b_dir)
    if not a_images:
        raise ValueError(f"{a_dir}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    if not b_images:
        raise ValueError(f"{b_dir}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    stems = sorted(a_images.keys() & b_images.keys())
    if not stems:
        raise ValueError(f"no file names in {a_dir} match those in {b_dir}")
    unmatched = [p for s, p in a_images.items() if s not in b_images] + [
        p for s, p in b_images.items() if s not in a_images
    ]
    return [(s, a_images[s], b_images[s]) for s in stems], unmatched


def check_pair_sizes(pairs) -> None:
    """Raise a ValueError naming the first pair whose files are unreadable or differ in size (reads headers only)."""
    from PIL import Image

    for _, a_path, b_path in pairs:
        sizes = []
        for path in (a_path, b_path):
            try:
                with Image.open(path) as im:
                    sizes.append(im.size)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                raise ValueError(f"{path}: cannot read image ({exc})") from None
        if sizes[0] != sizes[1]:
            raise ValueError(f"{a_path} ({sizes[0][0]}x{sizes[0][1]}) and {b_path} ({sizes[1][0]}x{sizes[1][1]}) differ in size")


def find_task_dirs(root: str | Path, task: str | None = None, prefer: str | None = None) -> tuple[Path, Path, str]:
    """Find a task's (a_dir, b_dir) under a dataset root by folder name, and name the task.

    Looks at `root` and two levels below for sibling folders named like the task's modalities
    (case-insensitive): MSRS / RoadScene `vi` + `ir`, KAIST `visible` + `lwir`, Harvard `MRI` +
    `CT` / `PET` / `SPECT`. Without `task`, every task is tried and exactly one must match. When
    several split folders match (MSRS train/ and test/), the one named `prefer` wins.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    tasks = [TASKS[task]] if task is not None else list(TASKS.values())
    level = [root]
    found = []
    for _ in range(3):
        for folder in level:
            children = {d.name.lower(): d for d in sorted(folder.iterdir()) if d.is_dir()}
            for t in tasks:
                a = next((children[n] for n in t.a_names if n in children), None)
                b = next((children[n] for n in t.b_names if n in children), None)
                if a is not None and b is not None:
                    found.append((a, b, t.name))
        if found:
            break
        level = [d for folder in level for d in sorted(folder.iterdir()) if d.is_dir()]
    if not found:
        names = "; ".join(f"{t.name}: {'/'.join(t.a_names)} + {'/'.join(t.b_names)}" for t in tasks)
        raise ValueError(f"{root}: found no paired folders for {names}")
    if len(found) > 1 and prefer is not None:
        preferred = [f for f in found if f[0].parent.name.lower() == prefer]
        found = preferred if len(preferred) == 1 else found
    if len({t for _, _, t in found}) > 1:
        listed = ", ".join(f"{t} ({a.name} + {b.name})" for a, b, t in found)
        raise ValueError(f"{root}: several tasks match ({listed}); pass --task")
    if len(found) > 1:
        listed = ", ".join(str(a.parent) for a, _, _ in found)
        raise ValueError(f"{root}: several folders hold {found[0][2]} pairs ({listed}); point --data at one of them")
    return found[0]


def to_grey(image: np.ndarray) -> np.ndarray:
    return rgb_to_grey(image) if image.ndim == 3 else image


class PairDataset(torch.utils.data.Dataset):
    """Registered (a, b) pairs as grey (1, size, size) float tensors for training.

    Each item is a random crop of `crop` pixels (pairs smaller than that are reflect-padded) or,
    with `resize`, the whole pair resized to resize x resize; then, with `augment`, the same random
    flips and 90-degree rotation for both images. The randomness of item i in epoch e depends only
    on (seed, e, i), so a resumed run sees the same samples. With `cache`, every pair is decoded
    once, here, and kept in memory (float32, 8 bytes a pixel a pair), so an item costs only its
    crop; the items are the same as without.
    """

    def __init__(self, pairs, crop: int | None = 256, resize: int | None = None, augment: bool = True, seed: int = 0,
                 cache: bool = False):
        if (crop is None) == (resize is None):
            raise ValueError("give exactly one of crop and resize")
        if not pairs:
            raise ValueError("no training pairs")
        self.pairs = [(Path(a), Path(b)) for _, a, b in pairs]
        self.crop, self.resize, self.augment, self.seed = crop, resize, augment, seed
        self.epoch = 0
        self.cached = [self.load_pair(i) for i in range(len(self.pairs))] if cache else None

    @property
    def cache_bytes(self) -> int:
        """Memory held by the decoded-image cache (0 without one)."""
        return sum(a.nbytes + b.nbytes for a, b in self.cached) if self.cached is not None else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def load_pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        a_path, b_path = self.pairs[index]
        a, b = to_grey(load_image(a_path)), to_grey(load_image(b_path))
        if a.shape != b.shape:
            raise ValueError(f"{a_path} ({a.shape[1]}x{a.shape[0]}) and {b_path} ({b.shape[1]}x{b.shape[0]}) differ in size")
        return torch.from_numpy(a)[None], torch.from_numpy(b)[None]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.cached[index] if self.cached is not None else self.load_pair(index)
        gen = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63)
        x = torch.cat([a, b])  # (2, H, W): crop and augment both together
        if self.resize is not None:
            x = F.interpolate(x[None], size=(self.resize, self.resize), mode="bilinear", antialias=True, align_corners=False)[0]
        else:
            x = reflect_pad(x[None], max(0, self.crop - x.shape[1]), max(0, self.crop - x.shape[2]))[0]
            top = int(torch.randint(0, x.shape[1] - self.crop + 1, (1,), generator=gen))
            left = int(torch.randint(0, x.shape[2] - self.crop + 1, (1,), generator=gen))
            x = x[:, top : top + self.crop, left : left + self.crop]
        if self.augment:
            if torch.rand((), generator=gen) < 0.5:
                x = x.flip(2)
            if torch.rand((), generator=gen) < 0.5:
                x = x.flip(1)
            x = torch.rot90(x, int(torch.randint(0, 4, (1,), generator=gen)), dims=(1, 2))
        x = x.clamp(0, 1).contiguous()
        return x[:1], x[1:]
