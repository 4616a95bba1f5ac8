"""Choosing between the "reference", "torch", "numba" and "triton" implementations of an op, in one place."""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("auto", "reference", "torch", "numba", "triton")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as absent
        return False


@functools.lru_cache(maxsize=None)
def numba_available() -> bool:
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def interpreter_enabled() -> bool:
    """True when Triton kernels run under the CPU interpreter (TRITON_INTERPRET=1 before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """Return the common device of the given tensors (None entries are skipped)."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listed}")
    return next(iter(devices.values()))


def check_backend_name(backend: str) -> str:
    """Return `backend` if it names a backend, else raise a ValueError listing the choices."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str, device: torch.device, has_cpu_kernel: bool = False,
                    dtype: torch.dtype | None = None) -> str:
    """Map a backend name to "reference", "torch", "numba" or "triton" for tensors of `dtype` on `device`.

    "auto" picks triton for CUDA tensors (when triton is installed), the op's compiled CPU kernel ("numba")
    for CPU tensors when the op has one (`has_cpu_kernel`), numba is installed and the tensors are not
    float64 (the numba kernels compute in fp32), and torch otherwise. "numba" on an op without a CPU
    kernel means its torch path.
    """
    check_backend_name(backend)
    if backend == "auto":
        if device.type == "cuda" and triton_available():
            return "triton"
        if device.type == "cpu" and has_cpu_kernel and numba_available() and dtype != torch.float64:
            return "numba"
        return "torch"
    if backend == "numba":
        if not has_cpu_kernel:
            return "torch"
        if dtype == torch.float64:
            raise TypeError("the numba backend computes in float32; use backend='torch' or 'reference' for float64")
        if device.type != "cpu":
            raise RuntimeError(f"numba backend runs on CPU tensors, got tensors on {device}; use backend='auto'")
        if not numba_available():
            raise RuntimeError("numba backend needs the numba package (pip install numba); use backend='torch'")
        return backend
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("triton backend needs the triton package (pip install triton); use backend='torch'")
        if device.type == "cuda":
            return backend
        if device.type == "cpu" and interpreter_enabled():
            return backend
        raise RuntimeError(
            f"triton backend needs CUDA tensors or TRITON_INTERPRET=1 set before import, got tensors on {device}; "
            "use backend='torch' on this device"
        )
    return backend
