"""The fused CPU ES2D scan (kernels/es2d_scan_cpu.py: gather rows -> dt projection + 4-group scan + merge in one
numba kernel) against the same composite on the reference backend, and when the fused path is (not) taken."""
import math

import pytest
import torch
from torch import nn

from fusionmamba_triton.layers.essm import SS2D, es2d_selective_scan, fused_cpu_scan_applies, register_ssm_parameters
from fusionmamba_triton.ops import es2d_gather_rows, es2d_scan_ref

from tests.ops.common import assert_close, needs_numba_cpu

pytestmark = needs_numba_cpu

RTOL = 2e-5  # fp32 throughout, our own exp and softplus: as the numba scan's tests


def make_ssm(d_inner: int, d_state: int = 16, seed: int = 0):
    """(x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds) as SS2D registers them, A_logs spread out."""
    torch.manual_seed(seed)
    module = nn.Module()
    register_ssm_parameters(module, d_inner, math.ceil(d_inner / 32), d_state)
    with torch.no_grad():
        module.A_logs.add_(0.3 * torch.randn_like(module.A_logs))
        module.Ds.uniform_(0.5, 1.5)
    return [p.detach() for p in (module.x_proj_weight, module.dt_projs_weight, module.dt_projs_bias,
                                 module.A_logs, module.Ds)]


def channels_last_input(batch, dim, height, width, seed=1):
    torch.manual_seed(seed)
    return torch.randn(batch, height, width, dim).permute(0, 3, 1, 2)  # (B, D, H, W) view of channels-last memory


SHAPES = {  # D = 16 and 48 run 16-channel work items, the others 32-channel ones
    "base-stage1-64x64-d192": (1, 192, 64, 64),
    "odd-9x7-batch2-d32": (2, 32, 9, 7),
    "odd-height-5x8-d48": (1, 48, 5, 8),
    "single-pixel-1x1-d16": (1, 16, 1, 1),
    "rect-6x10-batch3-d64": (3, 64, 6, 10),
}


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_fused_matches_reference(shape):
    batch, dim, height, width = shape
    params = make_ssm(dim)
    x = channels_last_input(*shape)
    with torch.no_grad():
        assert fused_cpu_scan_applies(x, "numba", *params)
        fused = es2d_selective_scan(x, *params, backend="numba")
        expected = es2d_selective_scan(x, *params, backend="reference")
    assert fused.shape == (batch, height, width, dim) and fused.dtype == torch.float32
    assert_close(fused, expected, torch.float32, "fused vs reference", rtol=RTOL)


def test_fused_takes_any_strides_and_a_state_size_off_the_vector():
    params = make_ssm(32, d_state=5)
    x = torch.randn(2, 32, 7, 9)  # channels-first memory
    with torch.no_grad():
        fused = es2d_selective_scan(x, *params, backend="numba")
        expected = es2d_selective_scan(x, *params, backend="reference")
    assert_close(fused, expected, torch.float32, "fused vs reference", rtol=RTOL)


@pytest.mark.parametrize("d_state", [16, 5], ids=["N16", "N5-tail"])
def test_kernel_reads_bf16_rows_and_projections_as_their_fp32_values(d_state):
    from fusionmamba_triton.kernels.es2d_scan_cpu import es2d_selective_scan_fwd

    x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds = make_ssm(32, d_state=d_state)
    rows = es2d_gather_rows(channels_last_input(2, 32, 7, 9)).bfloat16()
    x_dbl = torch.matmul(rows, x_proj_weight.bfloat16().unsqueeze(1).mT)
    dts = torch.matmul(x_dbl[..., :dt_projs_weight.shape[-1]].float(), dt_projs_weight.unsqueeze(1).mT)
    from_bf16 = es2d_selective_scan_fwd(rows, dts, x_dbl, A_logs, Ds, dt_projs_bias, 7, 9)
    from_fp32 = es2d_selective_scan_fwd(rows.float(), dts, x_dbl.float(), A_logs, Ds, dt_projs_bias, 7, 9)
    torch.testing.assert_close(from_bf16, from_fp32, rtol=0, atol=0)


def test_gather_rows_is_es2d_scan_transposed():
    x = channels_last_input(2, 24, 7, 6)
    rows = es2d_gather_rows(x)
    assert rows.shape == (4, 2, 4 * 3, 24) and rows.is_contiguous()
    assert torch.equal(rows.permute(1, 0, 3, 2), es2d_scan_ref(x))


def test_not_taken_with_gradients_or_ragged_channels_or_other_backends():
    params = make_ssm(32)
    x = channels_last_input(1, 32, 6, 6)
    assert not fused_cpu_scan_applies(x.clone().requires_grad_(), "numba", *params)
    assert not fused_cpu_scan_applies(x, "numba", *[p.clone().requires_grad_() for p in params])
    assert not fused_cpu_scan_applies(x, "torch", *params)
    assert not fused_cpu_scan_applies(x.double(), "auto", *params)
    assert fused_cpu_scan_applies(x, "auto", *params)
    ragged = make_ssm(24)
    assert not fused_cpu_scan_applies(channels_last_input(1, 24, 6, 6), "numba", *ragged)


def test_fused_flag_forces_or_refuses():
    params = make_ssm(32)
    x = channels_last_input(1, 32, 6, 6)
    with torch.no_grad():
        fused = es2d_selective_scan(x, *params, backend="numba", fused=True)
        separate = es2d_selective_scan(x, *params, backend="numba", fused=False)
    assert not torch.equal(fused, separate)  # two implementations, one result:
    assert_close(fused, separate, torch.float32, "fused vs separate ops", rtol=RTOL)
    with pytest.raises(ValueError, match="fused=True needs"):
        es2d_selective_scan(x, *params, backend="torch", fused=True)


def test_ss2d_gradients_take_the_unfused_path():
    torch.manual_seed(3)
    op = SS2D(16, backend="numba")  # D = 32
    x = torch.randn(1, 6, 5, 16, requires_grad=True)
    op(x).square().sum().backward()  # the fused kernel has no backward: this must not take it
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        reference = SS2D(16, backend="reference")
        reference.load_state_dict(op.state_dict())
        assert_close(op(x), reference(x), torch.float32, "SS2D numba vs reference", rtol=RTOL)


def test_ss2d_fused_under_bf16_autocast_close_to_fp32():
    torch.manual_seed(4)
    op = SS2D(16, backend="numba")
    x = torch.randn(1, 8, 8, 16)
    with torch.no_grad():
        fp32 = op(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = op(x)
    assert bf16.dtype == torch.bfloat16
    assert_close(bf16.float(), fp32, torch.bfloat16, "SS2D bf16 autocast vs fp32")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)")
def test_ss2d_frozen_projections_are_packed_and_the_step_sizes_stay_fp32():
    torch.manual_seed(5)
    op = SS2D(48, backend="numba")  # D = 96: 32-channel work items; R = 3
    x = torch.randn(2, 7, 9, 48)
    with torch.inference_mode():
        expected = op(x)
        op.frozen_cache = {}
        frozen = op(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            op(x)
    step_keys = {key for key in op.frozen_cache if str(key[1]).startswith("dt_proj_")}
    assert step_keys == {("onednn", f"dt_proj_{k}", torch.float32) for k in range(4)}  # fp32 under autocast too
    assert_close(frozen, expected, torch.float32, "SS2D frozen vs not", rtol=RTOL)
