import torch
import torch.nn.functional as F

from fusionmamba_triton.layers import ECA, BiAttn, DropPath


def test_eca_is_a_conv_along_pooled_channels():
    torch.manual_seed(0)
    eca = ECA()
    x = torch.randn(2, 5, 7, 6)
    pooled = x.mean(dim=(1, 2))
    k = eca.conv.weight.view(3)
    padded = F.pad(pooled, (1, 1))
    conv = k[0] * padded[:, :-2] + k[1] * padded[:, 1:-1] + k[2] * padded[:, 2:]
    torch.testing.assert_close(eca(x), x * torch.sigmoid(conv)[:, None, None, :])


def test_biattn_gates_the_unnormalised_input():
    torch.manual_seed(0)
    attn = BiAttn(16)
    assert attn.global_reduce.out_features == 2
    with torch.no_grad():
        attn.norm.weight.uniform_(0.5, 1.5)
        attn.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 5, 16)
    p = attn.norm(x).mean(dim=(1, 2))
    gate = torch.sigmoid(attn.channel_select(F.gelu(attn.global_reduce(p))))
    torch.testing.assert_close(attn(x), x * gate[:, None, None, :])


def test_drop_path():
    x = torch.ones(1000, 3)
    drop = DropPath(0.25)
    assert torch.equal(drop.eval()(x), x)
    torch.manual_seed(0)
    y = drop.train()(x)
    kept = y[:, 0] != 0
    assert torch.equal(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert (y == 0).all(dim=1).eq(~kept).all()
    assert 0.65 < kept.float().mean() < 0.85
