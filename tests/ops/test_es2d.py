"""ES2D scan / merge: the fast backends against the reference, forward and backward, and the
reference's own properties (scan then merge is the identity, merge is the adjoint of scan).

Pure data movement: results must be exact in every dtype. Backends run on the GPU when there is
one, else on the CPU (Triton under the interpreter); see tests/ops/common.py.
"""
import pytest
import torch

from fusionmamba_triton.ops import es2d_merge, es2d_merge_ref, es2d_scan, es2d_scan_ref
from tests.ops.common import DEVICE, HALF_DTYPES, backend_param

BACKENDS = ["reference", "torch", backend_param("triton")]
FAST_BACKENDS = ["torch", backend_param("triton")]
# (B, D, H, W): even, odd H and W, a single row / column, D not a multiple of the kernel's 16-channel block.
SHAPES = {
    "even_4x6": (2, 3, 4, 6),
    "odd_5x7": (1, 5, 5, 7),
    "row_1x9": (2, 2, 1, 9),
    "col_7x1": (1, 3, 7, 1),
    "d17_6x10": (1, 17, 6, 10),
    "d33_odd_9x3": (2, 33, 9, 3),
}
SHAPE_PARAMS = [pytest.param(shape, id=name) for name, shape in SHAPES.items()]


def _seq_len(height, width):
    return ((height + 1) // 2) * ((width + 1) // 2)


def _randn(*shape, seed=0, dtype=torch.float32, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)


def test_reference_groups_follow_the_spec():
    """k0 (even, even) row-major, k1 (odd, even) column-major, k2 (even, odd) row-major, k3 (odd, odd) column-major."""
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = es2d_scan_ref(x)[0, :, 0]
    expected = torch.tensor([[0, 2, 8, 10], [4, 12, 6, 14], [1, 3, 9, 11], [5, 13, 7, 15]], dtype=torch.float32)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_reference_pads_odd_sizes_with_zeros():
    x = torch.ones(1, 1, 3, 3)
    out = es2d_scan_ref(x)[0, :, 0]
    torch.testing.assert_close(out.sum(dim=1), torch.tensor([4.0, 2.0, 2.0, 1.0]))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape", SHAPE_PARAMS)
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), *HALF_DTYPES])
def test_scan_matches_reference(backend, shape, dtype):
    x = _randn(*shape, dtype=dtype)
    out = es2d_scan(x, backend=backend)
    assert out.shape == (shape[0], 4, shape[1], _seq_len(*shape[2:])) and out.is_contiguous()
    torch.testing.assert_close(out, es2d_scan_ref(x), rtol=0, atol=0)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape", SHAPE_PARAMS)
def test_merge_matches_reference(backend, shape):
    batch, dim, height, width = shape
    y = _randn(batch, 4, dim, _seq_len(height, width), seed=1)
    out = es2d_merge(y, height, width, backend=backend)
    assert out.is_contiguous()
    torch.testing.assert_close(out, es2d_merge_ref(y, height, width), rtol=0, atol=0)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape", [SHAPE_PARAMS[1], SHAPE_PARAMS[4]])
def test_strided_inputs_give_contiguous_outputs(backend, shape):
    """Channels-last x (the model's layout) and a transposed y are read in place."""
    batch, dim, height, width = shape
    x = _randn(batch, height, width, dim).permute(0, 3, 1, 2)
    scanned = es2d_scan(x, backend=backend)
    assert scanned.is_contiguous()
    torch.testing.assert_close(scanned, es2d_scan_ref(x.contiguous()), rtol=0, atol=0)
    y = _randn(batch, 4, _seq_len(height, width), dim, seed=2).transpose(2, 3)
    merged = es2d_merge(y, height, width, backend=backend)
    assert merged.is_contiguous()
    torch.testing.assert_close(merged, es2d_merge_ref(y.contiguous(), height, width), rtol=0, atol=0)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape", [SHAPE_PARAMS[0], SHAPE_PARAMS[1], SHAPE_PARAMS[5]])
def test_merge_channels_last(backend, shape):
    batch, dim, height, width = shape
    y = _randn(batch, 4, dim, _seq_len(height, width), seed=3)
    out = es2d_merge(y, height, width, backend=backend, channels_last=True)
    assert out.shape == (batch, height, width, dim) and out.is_contiguous()
    torch.testing.assert_close(out, es2d_merge_ref(y, height, width).permute(0, 2, 3, 1), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [pytest.param((2, 19, 34, 32), id="L272_d19"), pytest.param((1, 8, 32, 66), id="L528_d8")])
def test_torch_channels_last_paths_at_long_sequences(shape, dtype):
    """The torch backend's channels-last gather and merge (pixel rows + 2D transposes, used from
    MIN_ROWS_FOR_2D_TRANSPOSE steps on), forward and the merge's backward, exact."""
    from fusionmamba_triton.ops.es2d import MIN_ROWS_FOR_2D_TRANSPOSE

    batch, dim, height, width = shape
    assert _seq_len(height, width) >= MIN_ROWS_FOR_2D_TRANSPOSE
    x = _randn(batch, height, width, dim, dtype=dtype, device="cpu").permute(0, 3, 1, 2)
    torch.testing.assert_close(es2d_scan(x, backend="torch"), es2d_scan_ref(x), rtol=0, atol=0)
    y = _randn(batch, 4, dim, _seq_len(height, width), seed=5, dtype=dtype, device="cpu").requires_grad_()
    out = es2d_merge(y, height, width, backend="torch", channels_last=True)
    torch.testing.assert_close(out, es2d_merge_ref(y.detach(), height, width).permute(0, 2, 3, 1), rtol=0, atol=0)
    grad = _randn(batch, height, width, dim, seed=6, dtype=dtype, device="cpu")
    out.backward(grad)
    torch.testing.assert_close(y.grad, es2d_scan_ref(grad.permute(0, 3, 1, 2)), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPE_PARAMS)
def test_scan_then_merge_is_identity(backend, shape):
    x = _randn(*shape, seed=4)
    out = es2d_merge(es2d_scan(x, backend=backend), shape[2], shape[3], backend=backend)
    torch.testing.assert_close(out, x, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPE_PARAMS)
def test_merge_is_adjoint_of_scan(backend, shape):
    """<scan(x), y> == <x, merge(y)>; the padding cells of y have no counterpart in x."""
    batch, dim, height, width = shape
    x = _randn(*shape, seed=5, dtype=torch.float64)
    y = _randn(batch, 4, dim, _seq_len(height, width), seed=6, dtype=torch.float64)
    lhs = (es2d_scan(x, backend=backend) * y).sum()
    rhs = (x * es2d_merge(y, height, width, backend=backend)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["bdhw", "bhwd"])
@pytest.mark.parametrize("shape", [SHAPE_PARAMS[1], SHAPE_PARAMS[2], SHAPE_PARAMS[4]])
def test_gradients_match_reference(backend, channels_last, shape):
    batch, dim, height, width = shape
    x = _randn(*shape, seed=7).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad_scan = _randn(batch, 4, dim, _seq_len(height, width), seed=8)
    es2d_scan(x, backend=backend).backward(grad_scan)
    es2d_scan_ref(x_ref).backward(grad_scan)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=0)

    y = _randn(batch, 4, dim, _seq_len(height, width), seed=9).requires_grad_()
    y_ref = y.detach().clone().requires_grad_()
    out = es2d_merge(y, height, width, backend=backend, channels_last=channels_last)
    out_ref = es2d_merge_ref(y_ref, height, width)
    grad_merge = _randn(*out.shape, seed=10)
    out.backward(grad_merge)
    out_ref.backward(grad_merge.permute(0, 3, 1, 2) if channels_last else grad_merge)
    torch.testing.assert_close(y.grad, y_ref.grad, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("shape", [(1, 2, 3, 5), (2, 1, 4, 2)], ids=["odd_3x5", "even_4x2"])
def test_gradcheck(backend, shape):
    batch, dim, height, width = shape
    x = _randn(*shape, seed=11, dtype=torch.float64, device="cpu").requires_grad_()
    y = _randn(batch, 4, dim, _seq_len(height, width), seed=12, dtype=torch.float64, device="cpu").requires_grad_()
    assert torch.autograd.gradcheck(lambda t: es2d_scan(t, backend=backend), (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda t: es2d_merge(t, height, width, backend=backend), (y,), fast_mode=True)
    assert torch.autograd.gradcheck(
        lambda t: es2d_merge(t, height, width, backend=backend, channels_last=True), (y,), fast_mode=True)


def test_custom_ops_pass_opcheck():
    x = _randn(1, 3, 5, 4, device="cpu")
    torch.library.opcheck(torch.ops.fusionmamba.es2d_scan.default, (x.requires_grad_(), "torch"),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    y = _randn(1, 4, 3, 6, device="cpu").requires_grad_()
    torch.library.opcheck(torch.ops.fusionmamba.es2d_merge.default, (y, 5, 4, True, "torch"),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize(
    "call, error, match",
    [
        pytest.param(lambda: es2d_scan(torch.zeros(2, 3, 4)), ValueError, r"\(B, D, H, W\)", id="scan_ndim"),
        pytest.param(lambda: es2d_scan(torch.zeros(1, 2, 4, 4, dtype=torch.int64)), TypeError, "floating",
                     id="scan_int_dtype"),
        pytest.param(lambda: es2d_scan(torch.zeros(1, 2, 4, 4), step=3), ValueError, "step=2", id="scan_step"),
        pytest.param(lambda: es2d_scan(torch.zeros(1, 2, 4, 4), backend="cuda"), ValueError, "backend",
                     id="scan_backend"),
        pytest.param(lambda: es2d_merge(torch.zeros(1, 4, 2, 5), 4, 4), ValueError, r"\(B, 4, D, 4\)",
                     id="merge_seq_len"),
        pytest.param(lambda: es2d_merge(torch.zeros(1, 3, 2, 4), 4, 4), ValueError, "4", id="merge_groups"),
        pytest.param(lambda: es2d_merge(torch.zeros(4, 2, 4), 4, 4), ValueError, "B, 4, D", id="merge_ndim"),
        pytest.param(lambda: es2d_merge(torch.zeros(1, 4, 2, 4, dtype=torch.int32), 4, 4), TypeError,
                     "floating", id="merge_int_dtype"),
        pytest.param(lambda: es2d_merge(torch.zeros(1, 4, 2, 4), 0, 4), ValueError, "positive", id="merge_size"),
    ],
)
def test_bad_input_is_rejected(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", [(2, 192, 64, 64), (1, 1536, 8, 8), (2, 40, 13, 7)],
                         ids=["stage0", "stage3", "odd_13x7"])
def test_triton_on_cuda_matches_reference(dtype, shape):
    batch, dim, height, width = shape
    x = _randn(*shape, dtype=dtype, device="cuda").requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    scanned = es2d_scan(x, backend="triton")
    torch.testing.assert_close(scanned, es2d_scan_ref(x_ref), rtol=0, atol=0)
    grad = _randn(*scanned.shape, seed=1, dtype=dtype, device="cuda")
    scanned.backward(grad)
    torch.testing.assert_close(x.grad, es2d_merge_ref(grad, height, width), rtol=0, atol=0)
    channels_last = es2d_merge(scanned.detach(), height, width, backend="triton", channels_last=True)
    torch.testing.assert_close(channels_last, x.detach().permute(0, 2, 3, 1), rtol=0, atol=0)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(es2d_scan(x_cl, backend="triton"), scanned.detach(), rtol=0, atol=0)
