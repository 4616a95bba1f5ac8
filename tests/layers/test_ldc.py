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
