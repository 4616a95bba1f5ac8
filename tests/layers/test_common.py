"""The frozen CPU products of layers/common.py (oneDNN, weights packed once, activation applied on write) against
the plain PyTorch ops they stand in for."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fusionmamba_triton.layers.common import Linear, frozen_depthwise_conv_silu, frozen_linear

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)")


def frozen(module: nn.Module):
    module.frozen_cache = {}
    return module


@needs_onednn
@pytest.mark.parametrize("activation", [None, "silu", "gelu"], ids=["none", "silu", "gelu"])
def test_frozen_linear_applies_the_activation(activation):
    torch.manual_seed(0)
    layer = Linear(37, 53)  # sizes off any block
    x = torch.randn(2, 5, 3, 37)
    expected = {None: lambda t: t, "silu": F.silu, "gelu": F.gelu}[activation](F.linear(x, layer.weight, layer.bias))
    with torch.inference_mode():
        assert torch.equal(layer(x, activation=activation), expected)  # not frozen: the PyTorch ops
        out = frozen(layer)(x, activation=activation)
    assert [k[0] for k in layer.frozen_cache] == ["onednn"]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_frozen_linear_under_bf16_autocast_is_bf16_and_close():
    torch.manual_seed(0)
    module, weight = frozen(nn.Module()), torch.randn(64, 48) / 7
    x = torch.randn(3, 48)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = frozen_linear(module, "w", x, weight, activation="silu")
    assert out.dtype == (torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32)
    torch.testing.assert_close(out.float(), F.silu(x @ weight.T), rtol=2e-2, atol=2e-2)


@needs_onednn
@pytest.mark.parametrize("shape", [(2, 48, 9, 7), (1, 32, 1, 5)], ids=["odd-9x7-batch2", "one-row-1x5"])
def test_frozen_depthwise_conv_silu_matches_pytorch_and_packs_once_per_shape(shape):
    torch.manual_seed(0)
    batch, channels, height, width = shape
    owner = frozen(nn.Module())
    owner.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
    x = torch.randn(batch, height, width, channels).permute(0, 3, 1, 2)  # channels-last, as SS2D's conv input
    with torch.inference_mode():
        expected = F.silu(owner.conv(x))
        out = frozen_depthwise_conv_silu(owner, "conv", owner.conv, x)
        packed = owner.frozen_cache[("onednn", "conv", torch.float32)]
        again = frozen_depthwise_conv_silu(owner, "conv", owner.conv, x)
        assert owner.frozen_cache[("onednn", "conv", torch.float32)] is packed
        other = torch.randn(batch, height + 2, width, channels).permute(0, 3, 1, 2)
        torch.testing.assert_close(frozen_depthwise_conv_silu(owner, "conv", owner.conv, other),
                                   F.silu(owner.conv(other)), rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(again, out)


def test_frozen_depthwise_conv_silu_is_the_plain_ops_elsewhere():
    """Channels-first input, or autograd on: F.silu(conv(x)), with gradients."""
    owner = frozen(nn.Module())
    owner.conv = nn.Conv2d(16, 16, 3, padding=1, groups=16)
    x = torch.randn(1, 16, 5, 6, requires_grad=True)
    out = frozen_depthwise_conv_silu(owner, "conv", owner.conv, x)
    assert torch.equal(out, F.silu(owner.conv(x)))
    out.sum().backward()
    assert x.grad is not None and owner.frozen_cache == {}
