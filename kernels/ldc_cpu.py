"""LDC weight modulation for CPUs, compiled with numba (ops/ldc.py's "numba" backend).

W' = W * (base_mask - theta * m * c * sum_uv(W)), c the 3x3 centre indicator (ops/ldc.py), in one pass
over the weight: each (out, in) pair reads its 9 taps of W and base_mask once and writes its 9 taps of
W'. The PyTorch expression takes five passes, two of them strided gathers of the centre tap, which cost
more than the convolution itself in the deep stages (768 x 768 x 3 x 3 weights on 8 x 8 maps).

Layouts (C-contiguous fp32): weight, base_mask: (Co, Ci, 9); learnable_mask: (Co, Ci); out: (Co, Ci, 9),
or (Co, 9, Ci) when channels_last (the physical order of a channels-last (Co, Ci, 3, 3) tensor).
"""
from __future__ import annotations

import numba
import numpy as np

from .numba_runtime import JIT_FLAGS, use_torch_thread_count

CENTRE = 4  # the centre tap (1, 1) of a row-major 3 x 3 kernel


@numba.njit(parallel=True, cache=True, **JIT_FLAGS)
def _modulate(weight, base_mask, learnable_mask, theta, out, channels_last):
    c_out, c_in = learnable_mask.shape
    for o in numba.prange(c_out):
        for i in range(c_in):
            kernel_sum = np.float32(0.0)
            for k in range(9):
                kernel_sum += weight[o, i, k]
            centre = weight[o, i, CENTRE] * (base_mask[o, i, CENTRE] - theta * learnable_mask[o, i] * kernel_sum)
            for k in range(9):
                value = centre if k == CENTRE else weight[o, i, k] * base_mask[o, i, k]
                if channels_last:
                    out[o, k, i] = value
                else:
                    out[o, i, k] = value


def ldc_modulate(weight, base_mask, learnable_mask, theta, out) -> None:
    """Write W' into `out`, an fp32 CPU tensor of weight's shape (Co, Ci, 3, 3), contiguous or channels-last;
    the fp32 CPU inputs are read in place when contiguous."""
    import torch

    c_out, c_in = weight.shape[:2]
    channels_last = not out.is_contiguous()
    target = out.permute(0, 2, 3, 1) if channels_last else out
    if not target.is_contiguous() or out.dtype != torch.float32:
        raise ValueError("out must be a contiguous or channels-last float32 tensor")
    use_torch_thread_count()
    _modulate(weight.detach().float().contiguous().numpy().reshape(c_out, c_in, 9),
              base_mask.detach().float().contiguous().numpy().reshape(c_out, c_in, 9),
              learnable_mask.detach().float().contiguous().numpy(), np.float32(theta.item()),
              target.numpy().reshape((c_out, 9, c_in) if channels_last else (c_out, c_in, 9)), channels_last)
