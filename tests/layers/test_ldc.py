import pytest
import torch
import torch.nn.functional as F

from fusionmamba_triton.layers import LDC


def expected_ldc(x, ldc):
    """Spec §6 written out: the centre tap becomes W_c - theta * m * sum(W)."""
    w = ldc.conv.weight * ldc.base_mask
    centre = torch.zeros(3, 3)
    centre[1, 1] = 1
    w = w - ldc.conv.weight * ldc.learnable_theta * ldc.learnable_mask[:, :, None, None] * centre \
        * ldc.conv.weight.sum(dim=(2, 3), keepdim=True)
    return F.conv2d(x, w, padding=1)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 5, 4, 4)], ids=["odd", "even"])
def test_ldc_matches_formula_and_trains_the_right_parameters(backend, shape):
    torch.manual_seed(0)
    ldc = LDC(shape[1], 6, backend=backend)
    with torch.no_grad():
        ldc.learnable_mask.uniform_(0.5, 1.5)
        ldc.learnable_theta.fill_(0.7)
        ldc.base_mask.uniform_(0.9, 1.1)
    x = torch.randn(shape)
    y = ldc(x)
    torch.testing.assert_close(y, expected_ldc(x, ldc), atol=1e-5, rtol=1e-5)
    y.square().sum().backward()
    assert ldc.base_mask.grad is None
    for p in (ldc.conv.weight, ldc.learnable_mask, ldc.learnable_theta):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_ldc_state_dict_layout():
    ldc = LDC(3, 4)
    assert list(ldc.state_dict()) == ["base_mask", "learnable_mask", "learnable_theta", "conv.weight"]
    assert ldc.conv.bias is None
    assert torch.equal(ldc.base_mask, torch.ones(4, 3, 3, 3)) and ldc.learnable_theta.item() == 0.5


def test_ldc_accepts_channels_last_views():
    torch.manual_seed(0)
    ldc = LDC(4, 4, backend="torch")
    x_cl = torch.randn(2, 6, 5, 4)  # (B, h, w, C)
    y = ldc(x_cl.permute(0, 3, 1, 2))
    torch.testing.assert_close(y, expected_ldc(x_cl.permute(0, 3, 1, 2).contiguous(), ldc), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_frozen_ldc_packs_its_weight_per_input_shape_and_gives_the_same_outputs(precision):
    """Frozen on a CPU, a channels-last convolution runs through oneDNN with W' packed once per input shape (at the
    model's shapes F.conv2d calls the same kernel; at these small ones it may sum in another order)."""
    if precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no bf16 support in oneDNN")
    torch.manual_seed(0)
    ldc = LDC(24, 40, backend="torch")
    with torch.no_grad():
        ldc.learnable_mask.uniform_(0.5, 1.5)
    small, large = (torch.randn(2, 7, 9, 24).permute(0, 3, 1, 2), torch.randn(1, 12, 10, 24).permute(0, 3, 1, 2))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        expected = [ldc(x) for x in (small, large, small)]
        ldc.frozen_cache = {}
        try:
            got = []
            for x in (small, large, small):
                got.append(ldc(x))
                assert ldc.frozen_cache[("onednn", dtype)][0] == x.shape  # packed for the last shape seen
        finally:
            ldc.frozen_cache = None
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5 if precision == "fp32" else 1e-2)
