"""LDC: the learnable descriptive 3x3 convolution (README, "Design notes") as a module."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import check_backend_name, ldc_conv2d, resolve_backend
from ..ops.ldc import ldc_memory_format, modulated_weight
from .common import onednn_dtype, packed_conv3x3


class LDC(nn.Module):
    """(B, Ci, H, W) -> (B, Co, H, W), a 3x3 convolution whose centre tap is modulated.

    Checkpoint layout: `base_mask` (frozen, a Parameter so it is saved) is registered before
    `learnable_mask` and `learnable_theta`; the weight lives in `conv.weight` (no bias).
    The 3x3 centre indicator is built by the op on the input's device, so it is not saved.

    Frozen (FusionMamba.frozen()): on a CPU with autograd off, the modulated weight W' is computed once per
    dtype and layout and reused; it depends on the parameters only, and building it reads every weight, which
    costs as much as the convolution itself in the deep stages; for channels-last inputs only W' packed for
    oneDNN is kept, per input shape. On a GPU the Triton kernel fuses the modulation anyway.
    """

    def __init__(self, in_channels: int, out_channels: int, backend: str = "auto"):
        super().__init__()
        self.base_mask = nn.Parameter(torch.ones(out_channels, in_channels, 3, 3), requires_grad=False)
        self.learnable_mask = nn.Parameter(torch.ones(out_channels, in_channels))
        self.learnable_theta = nn.Parameter(torch.full((1,), 0.5))
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.backend = check_backend_name(backend)
        self.frozen_cache: dict | None = None  # W' (or W' packed for oneDNN) while frozen, else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen_cache is not None and x.device.type == "cpu" and not torch.is_grad_enabled():
            return self._frozen_conv(x)
        return ldc_conv2d(x, self.conv.weight, self.base_mask, self.learnable_mask, self.learnable_theta,
                          backend=self.backend)

    def _frozen_conv(self, x: torch.Tensor) -> torch.Tensor:
        """ldc_conv2d with W' from the frozen cache, built by the backend the op would use and in the dtype
        its convolution runs in (autocast's, when it is on): the same numbers as the op."""
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        memory_format = ldc_memory_format(x)
        if memory_format == torch.channels_last and onednn_dtype(self, x, self.conv.weight) == dtype:
            return self._onednn_conv(x.to(dtype))
        key = (dtype, memory_format)
        weight = self.frozen_cache.get(key)
        if weight is None:
            weight = self.frozen_cache[key] = self._modulated_weight(x, dtype, memory_format)
        return F.conv2d(x, weight, padding=1).contiguous(memory_format=memory_format)

    def _onednn_conv(self, x: torch.Tensor) -> torch.Tensor:
        """conv2d(x, W', padding=1) for channels-last x through oneDNN, with W' kept packed for x's shape and
        dtype only (packed_conv3x3). At the model's shapes F.conv2d calls the same oneDNN kernel, so the numbers
        are the same; a new input shape builds and packs W' again."""
        def build():
            return self._modulated_weight(x, x.dtype, torch.channels_last), None

        return packed_conv3x3(self, ("onednn", x.dtype), x, build, groups=1)

    def _modulated_weight(self, x: torch.Tensor, dtype: torch.dtype, memory_format: torch.memory_format):
        backend = resolve_backend(self.backend, x.device, has_cpu_kernel=True, dtype=x.dtype)
        with torch.no_grad():
            return modulated_weight(self.conv.weight, self.base_mask, self.learnable_mask,
                                    self.learnable_theta.reshape(1), dtype, memory_format, backend, scratch=False)
