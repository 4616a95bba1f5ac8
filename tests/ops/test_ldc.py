"""LDC convolution: the fast backends against the reference, forward and every gradient, in fp32,
fp16 and bf16; non-contiguous and channels-last layouts; every kernel config and K split; the numba
modulation kernel and its reused buffer.

Backends run on the GPU when there is one, else on the CPU (Triton under the interpreter); see
tests/ops/common.py.
"""
import threading

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fusionmamba_triton.ops import ldc_conv2d, ldc_conv2d_ref
from fusionmamba_triton.ops.ldc import ldc_modulated_weight
from tests.ops.common import (DEVICE, HALF_DTYPES, assert_close, backend_param, fp32_tolerance_on_device,
                              needs_numba_cpu, needs_triton)

BACKENDS = ["reference", "torch", backend_param("numba"), backend_param("triton")]
FAST_BACKENDS = ["torch", backend_param("numba"), backend_param("triton")]
# (B, Ci, Co, H, W): tiny channels (below tl.dot's 16), odd sizes, 1xN, Ci crossing the 32-channel
# K block, Co crossing the 64-channel N block.
SHAPES = {
    "ci3_co5_odd_5x7": (2, 3, 5, 5, 7),
    "ci20_co17_1x9": (1, 20, 17, 1, 9),
    "ci33_co18_4x3": (1, 33, 18, 4, 3),
    "ci4_co70_3x3": (1, 4, 70, 3, 3),
}
SHAPE_PARAMS = [pytest.param(shape, id=name) for name, shape in SHAPES.items()]


def make_inputs(batch, c_in, c_out, height, width, dtype=torch.float32, param_dtype=None, device=DEVICE, seed=0):
    """x, weight, base_mask (frozen), learnable_mask, theta with non-trivial values."""
    gen = torch.Generator().manual_seed(seed)
    param_dtype = param_dtype or dtype

    def rand(*shape, scale=1.0, shift=0.0, dt=param_dtype):
        return (shift + scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dt).to(device)

    x = rand(batch, c_in, height, width, dt=dtype).requires_grad_()
    weight = rand(c_out, c_in, 3, 3, scale=0.3).requires_grad_()
    base_mask = rand(c_out, c_in, 3, 3, scale=0.1, shift=1.0)
    learnable_mask = rand(c_out, c_in, scale=0.2, shift=1.0).requires_grad_()
    theta = torch.tensor([0.7], dtype=param_dtype, device=device).requires_grad_()
    return x, weight, base_mask, learnable_mask, theta


def _run(fn, inputs, grad_out_seed=1, grad_out=None):
    """Output and gradients (x, weight, learnable_mask, theta) of fn on fresh leaves."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*leaves)
    if grad_out is None:
        gen = torch.Generator().manual_seed(grad_out_seed)
        grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(grad_out.to(out.dtype).to(out.device))
    assert leaves[2].grad is None  # never a gradient to the frozen base_mask
    return [out] + [leaves[i].grad for i in (0, 1, 3, 4)]


def _assert_all_close(actual, expected, dtype, rtol=None):
    """Output and gradients against the expected ones (computed in fp32 or fp64), by dtype's tolerance."""
    names = ["out", "grad_x", "grad_weight", "grad_learnable_mask", "grad_theta"]
    if rtol is None and dtype == torch.float32:
        rtol = fp32_tolerance_on_device()
    for name, a, e in zip(names, actual, expected):
        assert_close(a.double(), e.double(), dtype, name, rtol=rtol)


def _upcast(inputs, dtype=torch.float32):
    return [t.detach().to(dtype).requires_grad_(t.requires_grad) for t in inputs]


def test_modulated_weight_changes_only_the_centre_tap():
    weight = torch.arange(18.0).reshape(1, 2, 3, 3)
    base_mask = torch.ones_like(weight)
    learnable_mask = torch.tensor([[1.0, 2.0]])
    out = ldc_modulated_weight(weight, base_mask, learnable_mask, torch.tensor([0.5]))
    expected = weight.clone()
    expected[0, :, 1, 1] = weight[0, :, 1, 1] * (1 - 0.5 * learnable_mask[0] * weight[0].sum(dim=(1, 2)))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape", SHAPE_PARAMS)
def test_forward_and_gradients_match_reference(backend, shape):
    inputs = make_inputs(*shape)
    actual = _run(lambda *t: ldc_conv2d(*t, backend=backend), inputs)
    expected = _run(ldc_conv2d_ref, _upcast(inputs, torch.float64))
    for a in actual:
        assert a.dtype == torch.float32
    _assert_all_close(actual, expected, torch.float32)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_matches_fp32_reference(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16 and DEVICE.type == "cpu":
        pytest.skip("the interpreter's bf16 tl.dot is wrong (numpy has no bf16); compiled bf16 runs on CUDA")
    inputs = make_inputs(2, 20, 17, 5, 7, dtype=dtype, seed=11)
    actual = _run(lambda *t: ldc_conv2d(*t, backend=backend), inputs)
    assert all(a.dtype == dtype for a in actual)
    _assert_all_close(actual, _run(ldc_conv2d_ref, _upcast(inputs)), dtype)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_non_contiguous_input_and_output_gradient(backend):
    """A sliced x and a transposed output gradient are read at their strides."""
    x, weight, base_mask, learnable_mask, theta = make_inputs(2, 6, 5, 6, 9, seed=12)
    x_view = torch.cat([x.detach(), x.detach()], dim=3)[..., 3:12].requires_grad_()
    assert not x_view.is_contiguous()
    inputs = [x_view, weight, base_mask, learnable_mask, theta]
    grad = torch.randn(2, 5, 9, 6, generator=torch.Generator().manual_seed(13)).to(DEVICE).transpose(2, 3)
    leaves = [x_view.detach().requires_grad_()] + [t.detach().clone().requires_grad_(t.requires_grad)
                                                    for t in inputs[1:]]
    out = ldc_conv2d(*leaves, backend=backend)
    out.backward(grad)
    expected = _run(ldc_conv2d_ref, _upcast([x_view.detach().contiguous().requires_grad_(), *inputs[1:]],
                                            torch.float64), grad_out=grad.contiguous().double())
    _assert_all_close([out, *(leaves[i].grad for i in (0, 1, 3, 4))], expected, torch.float32)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_channels_last_input_gives_channels_last_output(backend):
    inputs = list(make_inputs(2, 6, 5, 4, 5, seed=2))
    inputs[0] = inputs[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    actual = _run(lambda *t: ldc_conv2d(*t, backend=backend), inputs)
    assert actual[0].is_contiguous(memory_format=torch.channels_last)
    _assert_all_close(actual, _run(ldc_conv2d_ref, inputs), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_requested_gradients_are_returned(backend):
    x, weight, base_mask, learnable_mask, theta = make_inputs(1, 3, 4, 3, 3, seed=3)
    x = x.detach()
    learnable_mask = learnable_mask.detach()
    base_mask.requires_grad_()  # a caller forgetting to freeze it still gets no gradient there
    ldc_conv2d(x, weight, base_mask, learnable_mask, theta, backend=backend).sum().backward()
    assert x.grad is None and learnable_mask.grad is None and base_mask.grad is None
    assert weight.grad is not None and theta.grad is not None and theta.grad.shape == theta.shape


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fp32_params_with_other_activation_dtype(backend):
    """W' is computed in the parameters' dtype and cast to x's (here float32 x, float64 parameters)."""
    inputs = make_inputs(1, 5, 3, 4, 4, dtype=torch.float32, param_dtype=torch.float64, seed=4)
    actual = _run(lambda *t: ldc_conv2d(*t, backend=backend), inputs)
    assert actual[0].dtype == torch.float32 and actual[2].dtype == torch.float64
    _assert_all_close(actual, _run(ldc_conv2d_ref, _upcast(inputs, torch.float64)), torch.float32)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("shape", [(1, 2, 3, 3, 4), (2, 3, 2, 1, 3)], ids=["ci2_co3_3x4", "ci3_co2_1x3"])
def test_gradcheck(backend, shape):
    x, weight, base_mask, learnable_mask, theta = make_inputs(*shape, dtype=torch.float64, device="cpu", seed=5)
    assert torch.autograd.gradcheck(
        lambda *t: ldc_conv2d(t[0], t[1], base_mask, t[2], t[3], backend=backend),
        (x, weight, learnable_mask, theta), fast_mode=True)


@needs_triton
def test_triton_modulation_kernels_match_autograd():
    from fusionmamba_triton.kernels import ldc as kernels

    _, weight, base_mask, learnable_mask, theta = make_inputs(1, 37, 5, 1, 1, seed=6)  # 185 rows: 2 programs
    modulated = kernels.ldc_modulate(weight.detach(), base_mask, learnable_mask.detach(), theta.detach(),
                                     torch.float32)
    expected = ldc_modulated_weight(weight, base_mask, learnable_mask, theta)
    torch.testing.assert_close(modulated, expected.detach().permute(2, 3, 1, 0).reshape(9, 37, 5))
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    expected_grads = torch.autograd.grad(expected, (weight, learnable_mask, theta), grad)
    grads = kernels.ldc_modulate_backward(grad.permute(2, 3, 0, 1).reshape(9, 5, 37), weight.detach(), base_mask,
                                          learnable_mask.detach(), theta.detach())
    for actual, wanted in zip(grads, expected_grads):
        torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-5)


def test_weight_gradient_split_covers_every_pixel():
    pytest.importorskip("triton")
    from fusionmamba_triton.kernels import ldc as kernels

    for n_pix in (1, 31, 33, 4096, 1000003):
        splits, per_split = kernels.grad_weight_splits(n_pix, 96, 96)
        assert per_split % 64 == 0 and (splits - 1) * per_split < n_pix <= splits * per_split


def _kernel_configs():
    from fusionmamba_triton.kernels import configs

    conv = [pytest.param("conv", c, id="conv-" + "-".join(f"{k}{v}" for k, v in c.items()))
            for c in configs.LDC_CONV_CONFIGS]
    grad = [pytest.param("grad_weight", c, id="grad_weight-" + "-".join(f"{k}{v}" for k, v in c.items()))
            for c in configs.LDC_GRAD_WEIGHT_CONFIGS]
    return conv + grad


@needs_triton
@pytest.mark.parametrize("kind,config", _kernel_configs())
def test_every_kernel_config_and_k_split(kind, config):
    """Each config the autotuner may pick, forced, with the K loop unsplit and split unevenly."""
    from fusionmamba_triton.kernels import ldc as kernels

    g = torch.Generator().manual_seed(14)
    x = torch.randn(2, 40, 5, 7, generator=g).to(DEVICE)
    weight = torch.randn(9, 40, 21, generator=g).to(DEVICE)  # tap-major (9, Ci, Co)
    ref_weight = weight.permute(2, 1, 0).reshape(21, 40, 3, 3)
    if kind == "conv":
        config = _capped_conv(kernels, config)
        expected = torch.nn.functional.conv2d(x.double(), ref_weight.double(), padding=1)
        for split_k in (1, 5):
            out = kernels.conv3x3(x, weight, transposed=False, config=config, split_k=split_k)
            assert_close(out, expected, torch.float32, f"conv split_k={split_k}", rtol=fp32_tolerance_on_device())
        grad_in = torch.randn(2, 21, 5, 7, generator=g).to(DEVICE)
        expected_dx = torch.nn.grad.conv2d_input(x.shape, ref_weight.double(), grad_in.double(), padding=1)
        out = kernels.conv3x3(grad_in, weight, transposed=True, config=config, split_k=3)
        assert_close(out, expected_dx, torch.float32, "grad input", rtol=fp32_tolerance_on_device())
    else:
        grad_out = torch.randn(2, 21, 5, 7, generator=g).to(DEVICE)
        expected = torch.nn.grad.conv2d_weight(x.double(), ref_weight.shape, grad_out.double(), padding=1)
        out = kernels.conv3x3_grad_weight(x, grad_out, config=_capped_grad(kernels, config))
        assert_close(out, expected.permute(2, 3, 0, 1).reshape(9, 21, 40), torch.float32, "grad weight",
                     rtol=fp32_tolerance_on_device())


def _capped_conv(kernels, config):
    return kernels._capped(config, {"BLOCK_N": 32, "BLOCK_K": 64})


def _capped_grad(kernels, config):
    return kernels._capped(config, {"BLOCK_O": 32, "BLOCK_I": 64})


@pytest.mark.parametrize("backend", BACKENDS)
def test_flop_counter_sees_one_op(backend):
    inputs = make_inputs(2, 8, 4, 6, 5, seed=8)
    with FlopCounterMode(display=False) as counter:
        out = ldc_conv2d(*inputs, backend=backend)
    assert counter.get_total_flops() == 2 * 2 * 4 * 8 * 9 * 6 * 5 + 4 * 4 * 8 * 9
    assert list(counter.get_flop_counts()["Global"]) == [torch.ops.fusionmamba.ldc_conv2d]
    if backend != "reference":  # the reference backward is autograd over recomputed aten ops
        with FlopCounterMode(display=False) as counter:
            out.sum().backward()
        assert counter.get_total_flops() == 2 * (2 * 2 * 4 * 8 * 9 * 6 * 5) + 8 * 4 * 8 * 9


def test_custom_op_passes_opcheck():
    inputs = make_inputs(1, 3, 2, 4, 3, seed=9)
    torch.library.opcheck(torch.ops.fusionmamba.ldc_conv2d.default, (*inputs, "torch"),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@needs_numba_cpu
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous_out", "channels_last_out"])
@pytest.mark.parametrize("c_out, c_in", [(5, 3), (17, 20), (1, 1)], ids=["co5_ci3", "co17_ci20", "co1_ci1"])
def test_numba_modulation_matches_formula(c_out, c_in, channels_last):
    from fusionmamba_triton.kernels.ldc_cpu import ldc_modulate

    _, weight, base_mask, learnable_mask, theta = make_inputs(1, c_in, c_out, 3, 3, device="cpu", seed=10)
    out = torch.full((c_out, c_in, 3, 3), float("nan"))
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    ldc_modulate(weight, base_mask, learnable_mask, theta, out)
    expected = ldc_modulated_weight(weight, base_mask, learnable_mask, theta).detach()
    assert_close(out, expected, torch.float32, "modulated weight", rtol=1e-6)


@needs_numba_cpu
def test_numba_reused_buffer_serves_every_weight_of_one_shape():
    """Two weights of one shape, called in turns (the per-thread buffer is rewritten each call), and a
    call from another thread, which gets its own buffer."""
    first, second = make_inputs(2, 6, 5, 7, 4, seed=11), make_inputs(2, 6, 5, 7, 4, seed=12)
    for inputs in (first, second, first):
        with torch.no_grad():
            assert_close(ldc_conv2d(*inputs, backend="numba"), ldc_conv2d_ref(*inputs), torch.float32, "out")
    results = {}
    thread = threading.Thread(target=lambda: results.setdefault("out", ldc_conv2d(*second, backend="numba").detach()))
    thread.start()
    thread.join()
    assert_close(results["out"], ldc_conv2d_ref(*second).detach(), torch.float32, "out from another thread")


@needs_numba_cpu
def test_float64_runs_on_torch_under_auto_and_numba_refuses_it():
    inputs = make_inputs(1, 3, 2, 4, 4, dtype=torch.float64, device="cpu", seed=13)
    with torch.no_grad():
        assert_close(ldc_conv2d(*inputs), ldc_conv2d_ref(*inputs), torch.float64, "out")
        with pytest.raises(TypeError, match="float32"):
            ldc_conv2d(*inputs, backend="numba")


def _bad(**changes):
    inputs = dict(zip(["x", "weight", "base_mask", "learnable_mask", "theta"], make_inputs(1, 3, 2, 4, 4)))
    inputs.update(changes)
    return lambda: ldc_conv2d(**inputs)


@pytest.mark.parametrize(
    "call, error, match",
    [
        pytest.param(_bad(x=torch.zeros(3, 4, 4)), ValueError, r"\(B, Ci, H, W\)", id="x_ndim"),
        pytest.param(_bad(x=torch.zeros(1, 4, 4, 4)), ValueError, "channels", id="channel_mismatch"),
        pytest.param(_bad(weight=torch.zeros(2, 3, 5, 5)), ValueError, r"\(Co, Ci, 3, 3\)", id="weight_5x5"),
        pytest.param(_bad(base_mask=torch.ones(2, 3, 3)), ValueError, "base_mask", id="base_mask_shape"),
        pytest.param(_bad(learnable_mask=torch.ones(3, 2)), ValueError, "learnable_mask", id="mask_shape"),
        pytest.param(_bad(theta=torch.ones(2)), ValueError, "theta", id="theta_shape"),
        pytest.param(_bad(x=torch.zeros(1, 3, 4, 4, dtype=torch.int64)), TypeError, "floating", id="x_int"),
        pytest.param(_bad(weight=torch.zeros(2, 3, 3, 3, dtype=torch.int32)), TypeError, "floating",
                     id="weight_int"),
        pytest.param(_bad(theta=0.5), TypeError, "Tensor", id="theta_float"),
        pytest.param(_bad(x=torch.zeros(1, 3, 4, 4, device="meta")), ValueError, "one device", id="mixed_devices"),
        pytest.param(_bad(backend="gpu"), ValueError, "backend", id="unknown_backend"),
        pytest.param(_bad(x=torch.zeros(1, 3, 4, 4, dtype=torch.float64), backend="triton"), TypeError,
                     "float32/float16/bfloat16", id="triton_float64"),
    ],
)
def test_bad_input_is_rejected(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", [(2, 96, 96, 64, 64), (1, 768, 768, 8, 8), (2, 40, 70, 13, 7)],
                         ids=["stage0", "stage3", "odd_c40_co70"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_matches_fp64_reference(backend, dtype, shape):
    inputs = make_inputs(*shape, dtype=dtype, device="cuda")
    actual = _run(lambda *t: ldc_conv2d(*t, backend=backend), inputs)
    expected = _run(ldc_conv2d_ref, [t.detach().double().requires_grad_(t.requires_grad) for t in inputs])
    tolerance_dtype = torch.float16 if dtype == torch.float32 else dtype  # fp32 convolutions may use TF32
    _assert_all_close(actual, [e.to(a.dtype) for a, e in zip(actual, expected)], tolerance_dtype)


@pytest.mark.cuda
def test_cuda_channels_last_and_fp32_params_with_bf16_activations():
    inputs = list(make_inputs(2, 96, 96, 16, 16, dtype=torch.bfloat16, param_dtype=torch.float32, device="cuda"))
    inputs[0] = inputs[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    actual = _run(lambda *t: ldc_conv2d(*t, backend="triton"), inputs)
    assert actual[0].is_contiguous(memory_format=torch.channels_last)
    _assert_all_close(actual, _run(lambda *t: ldc_conv2d(*t, backend="torch"), inputs), torch.bfloat16)
