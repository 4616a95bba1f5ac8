"""What the op tests share: where each backend runs, and one tolerance table by dtype.

Every backend runs on CUDA when there is a GPU, else on the CPU; the "triton" backend on the CPU
needs the interpreter (tests/conftest.py turns it on when there is no GPU), so with a GPU and
TRITON_INTERPRET=0 nothing runs Triton on CPU tensors.
"""
from __future__ import annotations

import pytest
import torch

from fusionmamba_triton.ops.backends import interpreter_enabled, numba_available, triton_available

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TRITON_RUNS = triton_available() and (DEVICE.type == "cuda" or interpreter_enabled())
needs_triton = pytest.mark.skipif(not TRITON_RUNS, reason="triton needs CUDA or TRITON_INTERPRET=1")
needs_numba_cpu = pytest.mark.skipif(DEVICE.type != "cpu" or not numba_available(),
                                     reason="the numba backend runs on CPU tensors and needs numba")

# Largest error allowed, relative to the largest magnitude of the expected tensor, by the dtype the op
# computed in; the expected tensor comes from the fp32 (or, for fp64, fp64) reference.
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
HALF_DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]


def backend_param(backend: str):
    """A pytest param for `backend`, skipped where it cannot run."""
    if backend == "triton":
        return pytest.param(backend, marks=needs_triton)
    if backend == "numba":
        return pytest.param(backend, marks=needs_numba_cpu)
    return backend


def fp32_tolerance_on_device() -> float:
    """fp32 convolutions / matmuls may use TF32 on a GPU (PyTorch's and our default): fp16's tolerance there."""
    return TOLERANCES[torch.float16] if DEVICE.type == "cuda" else TOLERANCES[torch.float32]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str,
                 rtol: float | None = None) -> None:
    """max |actual - expected| <= TOLERANCES[dtype] * max |expected| (shapes equal, all finite)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    tol = TOLERANCES[dtype] if rtol is None else rtol
    scale = expected.abs().max().double().clamp(min=1e-6)
    err = ((actual.double() - expected.double()).abs().max() / scale).item()
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e} ({dtype})"
