"""The whole model through the Triton kernels: the official-parity fixture in fp32, and fp16/bf16 autocast.

On a GPU the kernels are compiled (benchmarks/gpu_check.sh runs this file as its "model" step);
without one they run under the interpreter, on the small fixture model.
"""
import os

import pytest
import torch

from fusionmamba_triton.model import FusionMamba
from tests.ops.common import DEVICE, HALF_DTYPES, TOLERANCES, assert_close, needs_triton

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "official_parity_small.pt")


@pytest.fixture(scope="module")
def parity():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture
def no_tf32():
    """fp32 convolutions and matmuls in IEEE fp32 (ours read the same flags), restored afterwards."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        saved = conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
        conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = "ieee", "ieee"
        yield
        conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
    else:
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        yield
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _model(parity):
    model = FusionMamba(**parity["config"], backend="triton")
    model.load_state_dict(parity["state_dict"], strict=True)
    return model.eval().to(DEVICE)


@needs_triton
@pytest.mark.skipif(DEVICE.type == "cpu" and os.environ.get("GPU_CHECK_DRY_RUN") != "1",
                    reason="under the interpreter (minutes) only in gpu_check.sh --dry-run; "
                           "tests/test_model.py runs the same fixture through the interpreter")
def test_triton_model_matches_the_official_output(parity, no_tf32):
    with torch.no_grad():
        y = _model(parity)(parity["x1"].to(DEVICE), parity["x2"].to(DEVICE))
    torch.testing.assert_close(y.cpu(), parity["y"], atol=1e-4, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_triton_model_under_autocast(parity, dtype):
    """fp16/bf16 autocast: linear layers and LDC in half precision, the scan in fp32 as the layers ask."""
    model = _model(parity)
    x1, x2 = parity["x1"].to(DEVICE), parity["x2"].to(DEVICE)
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        y = model(x1, x2)
    assert y.shape == parity["y"].shape
    assert_close(y.float().cpu(), parity["y"], dtype, "fused image", rtol=2 * TOLERANCES[dtype])
