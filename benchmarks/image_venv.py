"""Build a virtual environment that holds only the GPU machine's packages, for gpu_check.sh --dry-run.

    python benchmarks/image_venv.py DIR

The GPU machine's image has no network and none of PyWavelets, sewar or pytorch-msssim; its
Python packages include IMAGE_PACKAGES below. This makes DIR a venv (no pip download, no index)
whose site-packages sees, through symbolic links, exactly those distributions of the running
interpreter and what they need, nothing else; then the project can be installed into it the way
gpu_check.sh installs it there (pip install --no-index --no-deps --no-build-isolation -e .).
Distributions of the list missing here are reported and left out.
"""
from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import sysconfig

# The image's packages that the project, its tests and its benchmarks may use (issue 11), plus the
# installers pip install -e needs. Not on the image: PyWavelets, sewar, pytorch-msssim.
IMAGE_PACKAGES = ("torch", "triton", "numpy", "pillow", "scipy", "einops", "safetensors", "tqdm", "matplotlib",
                  "scikit-image", "numba", "pytest", "pytest-benchmark", "hypothesis", "pytest-xdist",
                  "pip", "setuptools", "wheel", "packaging")
NOT_ON_IMAGE = ("pywavelets", "sewar", "pytorch-msssim")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(roots) -> tuple[dict[str, metadata.Distribution], list[str]]:
    """The installed distributions of `roots` and everything they require (markers evaluated, no
    extras), by canonical name; and the names that are not installed."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    environment = dict(default_environment(), extra="")
    found, missing, todo = {}, [], [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in found or name in missing:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        found[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(environment):
                todo.append(canonical(req.name))
    return found, missing


def top_level_entries(dist: metadata.Distribution) -> set[str]:
    """First path components (packages, modules, .dist-info) a distribution installed into site-packages."""
    entries = set()
    for path in dist.files or []:
        first = path.parts[0]
        if first not in ("..", "__pycache__") and not first.endswith(".pth"):
            entries.add(first)
    return entries


def build(target: str) -> None:
    found, missing = requirement_closure(IMAGE_PACKAGES)
    forbidden = sorted(set(found) & set(NOT_ON_IMAGE))
    if forbidden:
        raise SystemExit(f"image packages require {forbidden}, which the GPU image does not have")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", target], check=True)
    linked = os.path.join(os.path.abspath(target), "image-site")
    os.makedirs(linked, exist_ok=True)
    for dist in found.values():
        site = str(dist.locate_file(""))
        for entry in top_level_entries(dist):
            source, link = os.path.join(site, entry), os.path.join(linked, entry)
            if os.path.exists(source) and not os.path.lexists(link):
                os.symlink(source, link)
    venv_python = os.path.join(target, "bin", "python")
    purelib = subprocess.run([venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "image_packages.pth"), "w") as f:
        f.write(f"import site; site.addsitedir({linked!r})\n")
    print(f"{target}: Python {sysconfig.get_python_version()}, {len(found)} distributions linked from this "
          f"interpreter ({', '.join(sorted(found))})")
    if missing:
        print(f"not installed here, so not in the venv: {', '.join(sorted(missing))}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    build(sys.argv[1])
