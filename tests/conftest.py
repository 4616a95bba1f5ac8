"""Test set-up: Triton runs under its CPU interpreter unless a GPU is present.

TRITON_INTERPRET must be set before any @triton.jit function is created, so this happens here,
before the test modules import the kernels. Set TRITON_INTERPRET=0 to test compiled kernels on CUDA.
"""
import os
import warnings

import pytest
import torch
from PIL import Image

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small, shared CI machine oversubscribed threads stall at every barrier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pillow_limit():
    """Restore Pillow's pixel limit and the warning filters after a test that changes them (set_max_image_pixels)."""
    saved = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        yield
    Image.MAX_IMAGE_PIXELS = saved
