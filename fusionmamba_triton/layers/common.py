"""Small pieces shared by the layers: a LayerNorm computed in fp32, autocast switched off, stochastic depth."""
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
