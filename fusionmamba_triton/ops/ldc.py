"""LDC, the learnable descriptive 3x3 convolution (FusionMamba's texture-enhancement branch; README,
"Design notes").

x: (B, Ci, H, W); weight, base_mask: (Co, Ci, 3, 3); learnable_mask: (Co, Ci); theta: (1,).
W' = W * (base_mask - theta * m[..., None, None] * c * sum_uv(W)), c the 3x3 centre indicator;
y = conv2d(x, W', padding=1): (B, Co, H, W), in x's dtype (W' is cast to it).

Backends: "reference" (the formula above under autograd), "torch" (W' built without autograd, then
F.conv2d), "numba" (W' built in one pass by kernels/ldc_cpu.py into a reused buffer, then F.conv2d;
what "auto" picks for CPU tensors) and "triton" (kernels/ldc.py, implicit GEMM with the modulation fused).
Every backend runs inside the custom op fusionmamba::ldc_conv2d, so FlopCounterMode counts one op
with 2 * B * Co * Ci * 9 * H * W FLOPs (+ the modulation) whichever backend computes it. The
"torch", "numba" and "triton" backward passes are the op fusionmamba::ldc_conv2d_backward (twice those
FLOPs); the "reference" backward recomputes ldc_conv2d_ref under autograd.
Gradients flow to x, weight (also through the kernel sum), learnable_mask and theta; never to
base_mask, which is a frozen parameter.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from .backends import check_same_device, resolve_backend


TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def ldc_modulated_weight(weight, base_mask, learnable_mask, theta):
    """W' of the module docstring: (Co, Ci, 3, 3)."""
    centre = torch.zeros(3, 3, dtype=weight.dtype, device=weight.device)
    centre[1, 1] = 1
    kernel_sum = weight.sum(dim=(2, 3), keepdim=True)
    return weight * (base_mask - theta * learnable_mask[:, :, None, None] * centre * kernel_sum)


def ldc_conv2d_ref(x, weight, base_mask, learnable_mask, theta):
    """Ground truth: modulate the weight, then a plain 3x3 convolution with padding 1."""
    return F.conv2d(x, ldc_modulated_weight(weight, base_mask, learnable_mask, theta).to(x.dtype), padding=1)


def _modulated_weight_torch(weight, base_mask, learnable_mask, theta, dtype, memory_format=torch.contiguous_format):
    """ldc_modulated_weight without autograd, in `dtype` and `memory_format` (the layout the convolution
    wants, so that it makes no copy): one full-size product, then only the centre tap changes (in fp32)."""
    modulated = torch.empty_like(weight, dtype=dtype, memory_format=memory_format)
    torch.mul(weight, base_mask, out=modulated)
    centre = weight[:, :, 1, 1] * (base_mask[:, :, 1, 1] - theta * learnable_mask * weight.sum(dim=(2, 3)))
    modulated[:, :, 1, 1] = centre
    return modulated


def _triton_kernels():
    from fusionmamba_triton.kernels import ldc as ldc_kernels  # needs triton: imported on first use

    return ldc_kernels


def _cpu_kernels():
    from fusionmamba_triton.kernels import ldc_cpu  # needs numba: imported on first use

    return ldc_cpu


_scratch = threading.local()


def _scratch_buffer(shape: torch.Size, memory_format: torch.memory_format) -> torch.Tensor:
    """A per-thread fp32 CPU buffer for W', one per weight shape and layout. W' lives only until its
    convolution returns, so it is rewritten in place rather than allocated: a fresh 21 MB tensor per
    call (768 x 768 x 3 x 3) costs page faults and a cold cache that the convolution then pays for."""
    buffers = _scratch.__dict__.setdefault("buffers", {})
    key = (tuple(shape), memory_format)
    if key not in buffers:
        with torch.inference_mode(False):  # a normal tensor, usable whether or not the first call was in inference mode
            buffers[key] = torch.empty(shape, dtype=torch.float32).contiguous(memory_format=memory_format)
    return buffers[key]


def _modulated_weight(weight, base_mask, learnable_mask, theta, x, backend):
    """W' in x's dtype and the layout the convolution of x wants (so that it makes no copy)."""
    return modulated_weight(weight, base_mask, learnable_mask, theta, x.dtype, ldc_memory_format(x), backend)


def modulated_weight(weight, base_mask, learnable_mask, theta, dtype, memory_format, backend, scratch=True):
    """W' (Co, Ci, 3, 3) in `dtype` and `memory_format`, computed as `backend`'s convolution computes it (so
    rounding matches). scratch=False: a tensor of its own, never the numba backend's reused buffer."""
    if backend == "reference":
        return ldc_modulated_weight(weight, base_mask, learnable_mask, theta).to(dtype).contiguous(
            memory_format=memory_format)
    if backend != "numba":
        return _modulated_weight_torch(weight, base_mask, learnable_mask, theta, dtype, memory_format)
    if scratch:
        modulated = _scratch_buffer(weight.shape, memory_format)
    else:
        modulated = torch.empty(weight.shape, dtype=torch.float32).contiguous(memory_format=memory_format)
    _cpu_kernels().ldc_modulate(weight, base_mask, learnable_mask, theta, modulated)
    return modulated if dtype == torch.float32 else modulated.to(dtype)


def ldc_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout PyTorch's convolution gives its output for input x (channels-last stays channels-last)."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


@torch.library.custom_op("fusionmamba::ldc_conv2d", mutates_args=())
def _ldc_conv2d_op(x: torch.Tensor, weight: torch.Tensor, base_mask: torch.Tensor,
                   learnable_mask: torch.Tensor, theta: torch.Tensor, backend: str) -> torch.Tensor:
    if backend == "triton":
        return _triton_kernels().ldc_conv2d_forward(x, weight, base_mask, learnable_mask, theta)
    if backend == "reference":
        out = ldc_conv2d_ref(x, weight, base_mask, learnable_mask, theta)
    else:
        out = F.conv2d(x, _modulated_weight(weight, base_mask, learnable_mask, theta, x, backend), padding=1)
    return out.contiguous(memory_format=ldc_memory_format(x))


@_ldc_conv2d_op.register_fake
def _(x, weight, base_mask, learnable_mask, theta, backend):
    batch, _, height, width = x.shape
    return x.new_empty(batch, weight.shape[0], height, width).contiguous(memory_format=ldc_memory_format(x))


def _modulation_backward_torch(grad_modulated, weight, base_mask, learnable_mask, theta):
    """dL/dW' (Co, Ci, 3, 3) -> (dweight, dlearnable_mask, dtheta); closed form, see kernels/ldc.py."""
    grad_modulated = grad_modulated.to(weight.dtype)
    kernel_sum = weight.sum(dim=(2, 3))
    grad_centre, weight_centre = grad_modulated[:, :, 1, 1], weight[:, :, 1, 1]
    scale = base_mask.clone()
    scale[:, :, 1, 1] -= theta * learnable_mask * kernel_sum
    grad_weight = grad_modulated * scale - (theta * learnable_mask * grad_centre * weight_centre)[:, :, None, None]
    centre_term = grad_centre * weight_centre * kernel_sum
    grad_theta = -(learnable_mask * centre_term).sum().reshape(theta.shape)
    return grad_weight, -theta * centre_term, grad_theta


def _backward_cpu(grad_out, x, weight, base_mask, learnable_mask, theta, backend):
    """One aten convolution_backward for both convolution gradients, then the modulation in closed form."""
    modulated = _modulated_weight(weight, base_mask, learnable_mask, theta, x, backend)
    grad_x, grad_modulated, _ = torch.ops.aten.convolution_backward(
        grad_out, x, modulated, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False])
    return (grad_x, *_modulation_backward_torch(grad_modulated, weight, base_mask, learnable_mask, theta))


@torch.library.custom_op("fusionmamba::ldc_conv2d_backward", mutates_args=())
def _ldc_conv2d_backward_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                            base_mask: torch.Tensor, learnable_mask: torch.Tensor, theta: torch.Tensor,
                            backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The "torch", "numba" and "triton" backward passes: (grad_x, grad_weight, grad_learnable_mask, grad_theta)."""
    if backend == "triton":
        return _triton_kernels().ldc_conv2d_backward(grad_out, x, weight, base_mask, learnable_mask, theta)
    grad_x, *grad_params = _backward_cpu(grad_out, x, weight, base_mask, learnable_mask, theta, backend)
    return (grad_x.contiguous(memory_format=ldc_memory_format(x)), *(g.contiguous() for g in grad_params))


@_ldc_conv2d_backward_op.register_fake
def _(grad_out, x, weight, base_mask, learnable_mask, theta, backend):
    return (torch.empty_like(x), torch.empty_like(weight, memory_format=torch.contiguous_format),
            torch.empty_like(learnable_mask, memory_format=torch.contiguous_format), torch.empty_like(theta))


def _setup_context(ctx, inputs, output):
    x, weight, base_mask, learnable_mask, theta, ctx.backend = inputs
    ctx.save_for_backward(x, weight, base_mask, learnable_mask, theta)


def _backward_reference(grad_out, x, weight, base_mask, learnable_mask, theta):
    """Ground-truth gradients: autograd through ldc_conv2d_ref, recomputed."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (x, weight, learnable_mask, theta)]
        out = ldc_conv2d_ref(leaves[0], leaves[1], base_mask.detach(), leaves[2], leaves[3])
        return torch.autograd.grad(out, leaves, grad_out)


def _backward(ctx, grad_out):
    x, weight, base_mask, learnable_mask, theta = ctx.saved_tensors
    grad_out = grad_out.to(x.dtype)
    if ctx.backend == "reference":
        grads = _backward_reference(grad_out, x, weight, base_mask, learnable_mask, theta)
    else:
        grads = _ldc_conv2d_backward_op(grad_out, x, weight, base_mask, learnable_mask, theta, ctx.backend)
    needed = [ctx.needs_input_grad[i] for i in (0, 1, 3, 4)]
    grad_x, grad_weight, grad_mask, grad_theta = (g if need else None for g, need in zip(grads, needed))
    return grad_x, grad_weight, None, grad_mask, grad_theta, None


_ldc_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


def _conv_flops(x_shape, weight_shape) -> int:
    batch, c_in, height, width = x_shape
    return 2 * batch * weight_shape[0] * c_in * 9 * height * width


@register_flop_formula(torch.ops.fusionmamba.ldc_conv2d)
def _ldc_conv2d_flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    return _conv_flops(x_shape, weight_shape) + 4 * weight_shape[0] * weight_shape[1] * 9


@register_flop_formula(torch.ops.fusionmamba.ldc_conv2d_backward)
def _ldc_conv2d_backward_flops(grad_out_shape, x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * _conv_flops(x_shape, weight_shape) + 8 * weight_shape[0] * weight_shape[1] * 9


def _check_inputs(x, weight, base_mask, learnable_mask, theta) -> None:
    named = {"x": x, "weight": weight, "base_mask": base_mask, "learnable_mask": learnable_mask, "theta": theta}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (float32/float16/bfloat16), got {t.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x must be (B, Ci, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"weight must be (Co, Ci, 3, 3), got shape {tuple(weight.shape)}")
    c_out, c_in = weight.shape[:2]
    if x.shape[1] != c_in:
        raise ValueError(f"x has {x.shape[1]} channels but weight expects Ci={c_in} (weight {tuple(weight.shape)})")
    if base_mask.shape != weight.shape:
        raise ValueError(f"base_mask must have weight's shape {tuple(weight.shape)}, got {tuple(base_mask.shape)}")
    if learnable_mask.shape != (c_out, c_in):
        raise ValueError(f"learnable_mask must be (Co, Ci) = {(c_out, c_in)}, got {tuple(learnable_mask.shape)}")
    if theta.numel() != 1:
        raise ValueError(f"theta must hold one value, shape (1,), got shape {tuple(theta.shape)}")
    check_same_device(**named)


def ldc_conv2d(x, weight, base_mask, learnable_mask, theta, backend="auto"):
    """(B, Ci, H, W) -> (B, Co, H, W); channels-last input gives channels-last output, like F.conv2d."""
    _check_inputs(x, weight, base_mask, learnable_mask, theta)
    if backend == "triton" and x.dtype not in TRITON_DTYPES:  # before resolving: a dtype error wins on any device
        raise TypeError(f"the triton backend takes float32/float16/bfloat16 x, got {x.dtype}; use backend='torch'")
    backend = resolve_backend(backend, x.device, has_cpu_kernel=True, dtype=x.dtype)
    return _ldc_conv2d_op(x, weight, base_mask, learnable_mask, theta.reshape(1), backend)
