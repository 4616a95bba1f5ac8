"""Small pieces shared by the layers: a LayerNorm computed in fp32, matrix products whose weights are kept
packed (oneDNN, CPU) or cast (autocast) inside FusionMamba.frozen(), autocast switched off, stochastic depth."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and checkpoint keys) that normalises in fp32 whatever the input dtype.

    Under bf16/fp16 autocast (where CPU autocast would run it in the low precision) the output is fp32 as
    long as the parameters are, so the residual stream stays fp32 and only the matmuls run in 16 bits.
    A model converted to bf16 as a whole gets bf16 out.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        out = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        param = self.weight if self.weight is not None else x
        return out.to(torch.promote_types(x.dtype, param.dtype))


def frozen_cast(module: nn.Module, name: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
    """`tensor`, a parameter of `module`, as autocast casts it for a matrix product, cast once per
    FusionMamba.frozen() block and kept in module.frozen_cache; `tensor` itself unless the module is
    frozen, autograd is off and autocast is on for its device (then the product is the same either way)."""
    cache = module.frozen_cache
    if cache is None or tensor is None or torch.is_grad_enabled():
        return tensor
    device = tensor.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return tensor
    dtype = torch.get_autocast_dtype(device)
    key = (name, dtype)
    if key not in cache:
        cache[key] = tensor.detach().to(dtype)
    return cache[key]


def onednn_dtype(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype a frozen CPU matrix product or convolution of `module` runs in through oneDNN with a packed
    weight (fp32, or bf16 under bf16 autocast or for a bf16 model on a CPU that has bf16 instructions);
    None where the plain PyTorch call must be used: not frozen, autograd on, not a CPU, no oneDNN."""
    if module.frozen_cache is None or torch.is_grad_enabled() or x.device.type != "cpu":
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
    elif x.dtype == weight.dtype:
        dtype = x.dtype
    else:
        return None
    if dtype == torch.float32:
        return dtype
    if dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return dtype
    return None


# Activations that oneDNN applies to a product's output before writing it (its names), and their PyTorch functions.
ONEDNN_ACTIVATIONS = {None: "none", "silu": "swish", "gelu": "gelu"}
TORCH_ACTIVATIONS = {None: lambda t: t, "silu": F.silu, "gelu": F.gelu}  # gelu: the exact (erf) one


def frozen_linear(module: nn.Module, name: str, x: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, activation: str | None = None) -> torch.Tensor:
    """activation(F.linear(x, weight, bias)) for a parameter `weight` (out, in) of `module`; x (..., in) ->
    (..., out); activation None, "silu" or "gelu" (exact).

    Inside FusionMamba.frozen() with autograd off, on a CPU the weight is kept once, packed in oneDNN's blocked
    layout, and the product runs through oneDNN's matmul with the activation applied as it writes the output:
    15-40% faster than PyTorch's (MKL) sgemm at the model's shapes, and the same numbers up to summation order
    (under bf16 the activation then sees the fp32 sum, not its bf16 rounding). Elsewhere under autocast the
    16-bit cast of the weight is kept (frozen_cast)."""
    dtype = onednn_dtype(module, x, weight)
    if dtype is None:
        out = F.linear(x, frozen_cast(module, name, weight), frozen_cast(module, name + "_bias", bias))
        return TORCH_ACTIVATIONS[activation](out)
    key = ("onednn", name, dtype)
    if key not in module.frozen_cache:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype), None)
        module.frozen_cache[key] = (packed, None if bias is None else bias.detach().to(dtype))
    packed, bias = module.frozen_cache[key]
    return torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, bias, ONEDNN_ACTIVATIONS[activation], [],
                                              "none" if activation == "gelu" else "")


def packed_conv3x3(module: nn.Module, key, x: torch.Tensor, build, groups: int, activation: str = "none"):
    """conv2d(x, W, bias, padding=1, groups=groups) for channels-last CPU x through oneDNN, `activation` ("none" or
    "swish") applied as it writes the output; channels-last out. W and bias come from build() -> (W, bias or None)
    in x's dtype, packed for x's shape and kept in module.frozen_cache[key] (packing otherwise runs on every
    call: half the time of the base model's 8x8 convolutions); a new input shape builds and packs them again."""
    shape, packed, bias = module.frozen_cache.get(key, (None, None, None))
    if shape != x.shape:
        weight, bias = build()
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), [1, 1], [1, 1], [1, 1], groups,
                                                             list(x.shape))
        module.frozen_cache[key] = (x.shape, packed, bias)
    out = torch.ops.mkldnn._convolution_pointwise(x, packed, bias, [1, 1], [1, 1], [1, 1], groups, activation, [], "")
    return out.contiguous(memory_format=torch.channels_last)


def frozen_depthwise_conv_silu(module: nn.Module, name: str, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """F.silu(conv(x)) for a depthwise 3x3 `conv` (padding 1, a submodule of `module`), x (B, D, h, w).

    Inside FusionMamba.frozen() with autograd off, for channels-last x on a CPU the convolution runs through oneDNN
    with its weight packed once for x's shape and the SiLU applied as it writes the output (packed_conv3x3): at the
    base model's first stage 8x PyTorch's fp32 depthwise convolution and SiLU (which take a slow path there), 1.3x
    in bf16."""
    dtype = onednn_dtype(module, x, conv.weight)
    if dtype is None or not x.is_contiguous(memory_format=torch.channels_last):
        return F.silu(conv(x))

    def build():
        return conv.weight.detach().to(dtype), None if conv.bias is None else conv.bias.detach().to(dtype)

    return packed_conv3x3(module, ("onednn", name, dtype), x.to(dtype), build, conv.weight.shape[0], "swish")


class Linear(nn.Linear):
    """nn.Linear (same parameters and checkpoint keys) that runs through frozen_linear: inside
    FusionMamba.frozen() its weight is kept packed for oneDNN (CPU) or cast for autocast (GPU)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frozen_cache: dict | None = None

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        """activation(linear(x)); activation None, "silu" or "gelu" (see frozen_linear)."""
        return frozen_linear(self, "weight", x, self.weight, self.bias, activation)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for `device_type`; False where autocast does not exist (e.g. "meta")."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def autocast_disabled(device_type: str):
    """A context with autocast off for `device_type`; a no-op where autocast does not exist (e.g. "meta")."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


class DropPath(nn.Module):
    """Stochastic depth: during training, zero whole samples with probability `drop_prob`
    and scale the kept ones by 1 / (1 - drop_prob). Identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def sample_scale(self, x: torch.Tensor) -> torch.Tensor | None:
        """The per-sample factor (B, 1, ..., 1) for a batch like `x` (0 or 1 / keep), None when inactive."""
        if self.drop_prob == 0.0 or not self.training:
            return None
        keep = 1.0 - self.drop_prob
        return x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep).div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.sample_scale(x)
        return x if scale is None else x * scale

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
