"""DVSS, ESSM and DFFM blocks against their formulas (README, "Design notes") and across backends."""
import pytest
import torch
import torch.nn.functional as F

from fusionmamba_triton.layers import CMFM, DFEM, DFFM, SS2D, DVSSBlock


def test_ss2d_parameter_shapes():
    op = SS2D(20, d_state=4)  # D = 40, R = ceil(20/16) = 2
    shapes = {k: tuple(v.shape) for k, v in op.state_dict().items()}
    assert shapes == {
        "x_proj_weight": (4, 10, 40), "dt_projs_weight": (4, 40, 2), "dt_projs_bias": (4, 40),
        "A_logs": (160, 4), "Ds": (160,), "out_norm.weight": (40,), "out_norm.bias": (40,),
        "in_proj.weight": (80, 20), "conv2d.weight": (40, 1, 3, 3), "conv2d.bias": (40,), "out_proj.weight": (20, 40),
    }
    assert torch.allclose(op.A_logs.exp()[5], torch.arange(1.0, 5.0))
    assert torch.equal(op.Ds, torch.ones(160))
    dt = F.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6


@pytest.mark.parametrize("hw", [(6, 10), (5, 7), (1, 3)], ids=["even", "odd", "one_row"])
def test_ss2d_torch_matches_reference(hw):
    torch.manual_seed(0)
    op = SS2D(12, d_state=4)
    x = torch.randn(2, *hw, 12, requires_grad=True)
    y_torch = op(x)
    op.backend = "reference"
    y_ref = op(x)
    torch.testing.assert_close(y_torch, y_ref, atol=1e-5, rtol=1e-5)
    g_torch, = torch.autograd.grad(y_torch.sum(), x)
    g_ref, = torch.autograd.grad(y_ref.sum(), x)
    torch.testing.assert_close(g_torch, g_ref, atol=1e-5, rtol=1e-4)


def test_dvss_block_formula():
    torch.manual_seed(0)
    block = DVSSBlock(16, d_state=4).eval()
    u = torch.randn(1, 4, 6, 16)
    s = block.op(block.norm(u))
    e = block.self_attention_cross_channel(s)
    c = block.conv_branch((s + e).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    v = u + block.se(s) + block.se(c)
    expected = v + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(v))))
    torch.testing.assert_close(block(u), expected, atol=1e-5, rtol=1e-5)


def test_dfem_formula():
    torch.manual_seed(0)
    dfem = DFEM(8)
    a1, a2 = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    f1, f2 = dfem(a1, a2)
    c1, c2 = a1.permute(0, 3, 1, 2), a2.permute(0, 3, 1, 2)
    s = c1 + c2
    w12 = torch.sigmoid((c1 - c2).mean(dim=(2, 3), keepdim=True))
    w21 = torch.sigmoid((c2 - c1).mean(dim=(2, 3), keepdim=True))
    e1 = dfem.texture_enhance1(c1) + w12 * s + c1
    e2 = dfem.texture_enhance2(c2) + w21 * s + c2
    torch.testing.assert_close(f1, e1.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f2, e2.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)


def test_cmfm_official_gate_ignores_in_proj2_z_half():
    torch.manual_seed(0)
    cmfm = CMFM(8, d_state=4)
    n1, n2 = torch.randn(1, 4, 6, 8), torch.randn(1, 4, 6, 8)
    y = cmfm(n1, n2)
    with torch.no_grad():
        cmfm.in_proj2.weight[16:] = 0.0  # the z half of in_proj2
    torch.testing.assert_close(cmfm(n1, n2), y)
    cmfm.gate = "paper"
    assert not torch.allclose(cmfm(n1, n2), y)


def test_dffm_output_adds_inputs_and_eca():
    torch.manual_seed(0)
    dffm = DFFM(8, d_state=4)
    i1, i2 = torch.randn(1, 6, 4, 8), torch.randn(1, 6, 4, 8)
    f1, f2 = dffm.Cross_layer(i1, i2)
    cm = dffm.self_attention_cross(dffm.ln_1(f1), dffm.ln_2(f2))
    expected = i1 + i2 + cm + dffm.self_attention_cross_spatial(cm)
    torch.testing.assert_close(dffm(i1, i2), expected, atol=1e-5, rtol=1e-5)
