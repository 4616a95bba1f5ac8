"""LDC, the learnable descriptive 3x3 convolution: weight modulation and the convolution, forward and backward.

Contract (the reference is fusionmamba_triton.ops.ldc_conv2d_ref):
    x: (B, Ci, H, W) at any strides; weight, base_mask: (Co, Ci, 3, 3); learnable_mask m: (Co, Ci); theta: (1,)
    W'[o, i, t] = W[o, i, t] * (base[o, i, t] - [t == 4] * theta * m[o, i] * S[o, i]),  S = sum_t W[o, i, t]
    y = conv2d(x, W', stride 1, padding 1): (B, Co, H, W) in x's dtype, channels-last when x is (as F.conv2d)
W' is written tap-major as (9, Ci, Co) in the activation dtype. Gradients go to x, W (also through S),
m and theta; fp32 accumulation throughout.

Design. The convolution is an implicit GEMM: M = pixels, N = output channels, K = input channels
x 9 taps, with tl.dot and fp32 accumulation; the same kernel computes the input gradient (taps
flipped, weight read transposed). At batch 1 the late stages have few pixels, so the K loop is also
split over SPLIT_K programs whose fp32 partial outputs are summed afterwards (deterministic, no
atomics). The weight gradient is a second implicit GEMM (M = Co, N = Ci, K = pixels), split over
pixel chunks into an fp32 partial buffer that is summed afterwards. Tile sizes, warps and
pipeline stages come from kernels/configs.py and are autotuned on CUDA; channel blocks are at
least 16 (tl.dot's minimum), smaller channel counts are masked.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .configs import (
    GRAD_WEIGHT_TARGET_PROGRAMS,
    LDC_CONV_CONFIGS,
    LDC_GRAD_WEIGHT_CONFIGS,
    LDC_MODULATE_BLOCK_ROWS,
    LDC_MODULATE_NUM_WARPS,
    LDC_PROGRAMS_PER_SM,
    MODEL_DIMS,
    autotune_enabled,
    ldc_channel_block,
)


@triton.jit
def ldc_modulate_fwd_kernel(
    w_ptr, base_ptr, mask_ptr, theta_ptr, out_ptr,
    N_ROWS, C_IN,
    stride_ot, stride_oi, stride_oo,
    BLOCK_R: tl.constexpr,
):
    """w, base: (Co * Ci, 9) contiguous; mask: (Co * Ci,); out[t, i, o] at the given strides."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    taps = tl.arange(0, 16)
    mask_r = rows < N_ROWS
    mask = mask_r[:, None] & (taps < 9)[None, :]
    offs = rows[:, None] * 9 + taps[None, :]
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    base = tl.load(base_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    learnable = tl.load(mask_ptr + rows, mask=mask_r, other=0.0).to(tl.float32)
    theta = tl.load(theta_ptr).to(tl.float32)
    kernel_sum = tl.sum(w, axis=1)
    is_centre = (taps == 4)[None, :]
    scale = base - tl.where(is_centre, (theta * learnable * kernel_sum)[:, None], 0.0)
    o = rows // C_IN
    i = rows % C_IN
    out_offs = taps[None, :] * stride_ot + i[:, None] * stride_oi + o[:, None] * stride_oo
    tl.store(out_ptr + out_offs, (w * scale).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def ldc_modulate_bwd_kernel(
    grad_ptr, w_ptr, base_ptr, mask_ptr, theta_ptr, dw_ptr, dmask_ptr, dtheta_partial_ptr,
    N_ROWS, C_IN,
    stride_gt, stride_go, stride_gi,
    BLOCK_R: tl.constexpr,
):
    """grad[t, o, i] = dL/dW' at the given strides -> dW (Co * Ci, 9), dm (Co * Ci,), one dtheta per program."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    taps = tl.arange(0, 16)
    mask_r = rows < N_ROWS
    mask = mask_r[:, None] & (taps < 9)[None, :]
    offs = rows[:, None] * 9 + taps[None, :]
    o = rows // C_IN
    i = rows % C_IN
    grad_offs = taps[None, :] * stride_gt + o[:, None] * stride_go + i[:, None] * stride_gi
    g = tl.load(grad_ptr + grad_offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    base = tl.load(base_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    learnable = tl.load(mask_ptr + rows, mask=mask_r, other=0.0).to(tl.float32)
    theta = tl.load(theta_ptr).to(tl.float32)
    is_centre = (taps == 4)[None, :]
    kernel_sum = tl.sum(w, axis=1)
    g_centre = tl.sum(tl.where(is_centre, g, 0.0), axis=1)
    w_centre = tl.sum(tl.where(is_centre, w, 0.0), axis=1)
    # The centre tap depends on every tap through S: d(W_c * theta * m * S)/dW_t = theta * m * W_c.
    scale = base - tl.where(is_centre, (theta * learnable * kernel_sum)[:, None], 0.0)
    dw = g * scale - (theta * learnable * g_centre * w_centre)[:, None]
    centre_term = g_centre * w_centre * kernel_sum
    tl.store(dw_ptr + offs, dw.to(dw_ptr.dtype.element_ty), mask=mask)
    tl.store(dmask_ptr + rows, (-theta * centre_term).to(dmask_ptr.dtype.element_ty), mask=mask_r)
    tl.store(dtheta_partial_ptr + pid, -tl.sum(learnable * centre_term, axis=0))


@triton.jit
def ldc_conv3x3_kernel(
    x_ptr, w_ptr, y_ptr,
    N_PIX, C_IN, C_OUT, H, W, SPLIT_K, stride_ys,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_wt, stride_wk, stride_wn,
    stride_yb, stride_yc, stride_yh, stride_yw,
    FLIP_TAPS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[s, b, n, h, w] = sum over split s's (tap, k) steps of w[tap', k, n] * x[b, k, h + dh, w + dw].

    Zero padding 1; tap' = 8 - tap when FLIP_TAPS (the input gradient), else tap. The K loop of
    9 * cdiv(C_IN, BLOCK_K) steps is cut into SPLIT_K contiguous ranges, one per program along grid
    axis 2, each writing its own output slice (stride_ys apart; 0 when SPLIT_K == 1). x and y at any strides.
    """
    # Pixel coordinates in int32 (cheap div/mod); every address offset below is int64.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(2)
    mask_m = offs_m < N_PIX
    mask_n = offs_n < C_OUT
    b = (offs_m // (H * W)).to(tl.int64)
    h = (offs_m // W) % H
    w = offs_m % W
    n_k_blocks = tl.cdiv(C_IN, BLOCK_K)
    steps_per_split = tl.cdiv(9 * n_k_blocks, SPLIT_K)
    first = split * steps_per_split
    last = tl.minimum(first + steps_per_split, 9 * n_k_blocks)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat loop over (tap, channel block) pipelines better than two nested ones.
    for step in range(first, last):
        tap = step // n_k_blocks
        offs_k = (step % n_k_blocks) * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
        mask_k = offs_k < C_IN
        hh = h + (tap // 3 - 1)
        ww = w + (tap % 3 - 1)
        valid = mask_m & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        x_rows = b * stride_xb + hh.to(tl.int64) * stride_xh + ww.to(tl.int64) * stride_xw
        a = tl.load(x_ptr + x_rows[:, None] + offs_k[None, :] * stride_xc,
                    mask=valid[:, None] & mask_k[None, :], other=0.0)
        w_tap = (8 - tap) if FLIP_TAPS else tap
        wt = tl.load(w_ptr + w_tap * stride_wt + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                     mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a, wt, acc, input_precision=INPUT_PRECISION)
    y_offs = (split.to(tl.int64) * stride_ys + b * stride_yb + h.to(tl.int64) * stride_yh
              + w.to(tl.int64) * stride_yw)[:, None]
    y_offs += offs_n[None, :] * stride_yc
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def ldc_conv3x3_grad_weight_kernel(
    x_ptr, dy_ptr, partial_ptr,
    N_PIX, C_IN, C_OUT, H, W, PIX_PER_SPLIT,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_yb, stride_yc, stride_yh, stride_yw,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """partial[s, tap, o, i] = sum over pixel chunk s of dy[b, o, h, w] * x[b, i, h + dh, w + dw] (fp32)."""
    pid_oi = tl.program_id(0)
    tap = tl.program_id(1)
    split = tl.program_id(2)
    n_i_blocks = tl.cdiv(C_IN, BLOCK_I)
    offs_o = (pid_oi // n_i_blocks).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_i = (pid_oi % n_i_blocks).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_o = offs_o < C_OUT
    mask_i = offs_i < C_IN
    dh = tap // 3 - 1
    dw = tap % 3 - 1
    acc = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
    start = split * PIX_PER_SPLIT
    for p0 in range(0, PIX_PER_SPLIT, BLOCK_P):
        # Pixel coordinates in int32 (cheap div/mod); every address offset is int64.
        offs_p = start + p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < N_PIX
        b = (offs_p // (H * W)).to(tl.int64)
        h = (offs_p // W) % H
        w = offs_p % W
        hh = h + dh
        ww = w + dw
        valid = mask_p & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        dy_pix = b * stride_yb + h.to(tl.int64) * stride_yh + w.to(tl.int64) * stride_yw
        g = tl.load(dy_ptr + dy_pix[None, :] + offs_o[:, None] * stride_yc,
                    mask=mask_o[:, None] & mask_p[None, :], other=0.0)
        x_pix = b * stride_xb + hh.to(tl.int64) * stride_xh + ww.to(tl.int64) * stride_xw
        x_offs = x_pix[:, None] + offs_i[None, :] * stride_xc
        xs = tl.load(x_ptr + x_offs, mask=valid[:, None] & mask_i[None, :], other=0.0)
        acc = tl.dot(g, xs, acc, input_precision=INPUT_PRECISION)
    out_offs = ((split * 9 + tap).to(tl.int64) * C_OUT + offs_o[:, None]) * C_IN + offs_i[None, :]
    tl.store(partial_ptr + out_offs, acc, mask=mask_o[:, None] & mask_i[None, :])


def _capped(config: dict, caps: dict) -> dict:
    return {key: min(value, caps[key]) if key in caps else value for key, value in config.items()}


def _capped_configs(configs: list[dict], caps: dict) -> list[dict]:
    """`configs` with their blocks capped by `caps`, duplicates dropped (first kept, order kept)."""
    return list({tuple(sorted(c.items())): c for c in (_capped(c, caps) for c in configs)}.values())


def conv_configs(c_in: int, c_out: int) -> list[dict]:
    """LDC_CONV_CONFIGS with channel blocks capped to the channel counts (K = c_in, N = c_out), deduplicated."""
    return _capped_configs(LDC_CONV_CONFIGS, {"BLOCK_N": ldc_channel_block(c_out, 256),
                                              "BLOCK_K": ldc_channel_block(c_in, 256)})


def grad_weight_configs(c_in: int, c_out: int) -> list[dict]:
    """LDC_GRAD_WEIGHT_CONFIGS with channel blocks capped to the channel counts, deduplicated."""
    return _capped_configs(LDC_GRAD_WEIGHT_CONFIGS, {"BLOCK_O": ldc_channel_block(c_out, 256),
                                                     "BLOCK_I": ldc_channel_block(c_in, 256)})


def _meta(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("num_warps", "num_stages")}


@functools.lru_cache(maxsize=None)
def _tuned(fn, configs: tuple) -> object:
    """triton.autotune over `configs` (tuples of config items), keyed on the GEMM shape."""
    key = ["N_PIX", "C_IN", "C_OUT"]
    return triton.autotune(configs=[triton.Config(_meta(dict(c)), num_warps=dict(c)["num_warps"],
                                                  num_stages=dict(c)["num_stages"]) for c in configs], key=key)(fn)


def _run(fn, configs: list[dict], grid, args: tuple, kwargs: dict, config: dict | None) -> None:
    """Launch `fn` with `config`, the autotuner over `configs`, or the first config."""
    if config is None and autotune_enabled():
        _tuned(fn, tuple(tuple(sorted(c.items())) for c in configs))[grid](*args, **kwargs)
        return
    config = config or configs[0]
    fn[grid(config)](*args, **kwargs, **_meta(config), num_warps=config["num_warps"],
                     num_stages=config["num_stages"])


def _cudnn_allows_tf32() -> bool:
    """Whether PyTorch's own fp32 convolutions may use TF32 (new fp32_precision API first, then allow_tf32)."""
    backends = torch.backends
    for owner in (getattr(backends.cudnn, "conv", None), backends.cudnn, backends):
        precision = getattr(owner, "fp32_precision", None)
        if precision in ("tf32", "ieee"):
            return precision == "tf32"
    try:
        return bool(backends.cudnn.allow_tf32)
    except RuntimeError:  # legacy and new flags mixed: PyTorch refuses to answer; its default is TF32
        return True


def input_precision(dtype: torch.dtype) -> str:
    """tf32 for fp32 activations when PyTorch's own convolutions may use it (its default), else ieee."""
    return "tf32" if dtype == torch.float32 and _cudnn_allows_tf32() else "ieee"


def _output_like(inp: torch.Tensor, channels: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, channels, H, W), channels-last in memory when `inp` is, as PyTorch's convolution does."""
    batch, _, height, width = inp.shape
    channels_last = inp.is_contiguous(memory_format=torch.channels_last) and not inp.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(batch, channels, height, width, device=inp.device, dtype=dtype or inp.dtype,
                       memory_format=fmt)


def ldc_modulate(weight, base_mask, learnable_mask, theta, out_dtype: torch.dtype) -> torch.Tensor:
    """W' of the module docstring as a tap-major (9, Ci, Co) tensor of `out_dtype`."""
    c_out, c_in = weight.shape[:2]
    out = torch.empty(9, c_in, c_out, device=weight.device, dtype=out_dtype)
    n_rows = c_out * c_in
    ldc_modulate_fwd_kernel[(triton.cdiv(n_rows, LDC_MODULATE_BLOCK_ROWS),)](
        weight.contiguous(), base_mask.contiguous(), learnable_mask.contiguous(), theta, out,
        n_rows, c_in, *out.stride(), BLOCK_R=LDC_MODULATE_BLOCK_ROWS, num_warps=LDC_MODULATE_NUM_WARPS,
    )
    return out


def ldc_modulate_backward(grad_modulated, weight, base_mask, learnable_mask, theta):
    """grad_modulated (9, Co, Ci) at any strides -> (dweight, dlearnable_mask, dtheta) in the parameters' dtypes."""
    c_out, c_in = weight.shape[:2]
    n_rows = c_out * c_in
    n_programs = triton.cdiv(n_rows, LDC_MODULATE_BLOCK_ROWS)
    grad_weight = torch.empty(weight.shape, device=weight.device, dtype=weight.dtype)
    grad_mask = torch.empty(learnable_mask.shape, device=weight.device, dtype=learnable_mask.dtype)
    dtheta_partial = torch.empty(n_programs, device=weight.device, dtype=torch.float32)
    ldc_modulate_bwd_kernel[(n_programs,)](
        grad_modulated, weight.contiguous(), base_mask.contiguous(), learnable_mask.contiguous(), theta,
        grad_weight, grad_mask, dtheta_partial, n_rows, c_in, *grad_modulated.stride(),
        BLOCK_R=LDC_MODULATE_BLOCK_ROWS, num_warps=LDC_MODULATE_NUM_WARPS,
    )
    grad_theta = dtheta_partial.sum().reshape(theta.shape).to(theta.dtype)
    return grad_weight, grad_mask, grad_theta


def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def conv_split_k(n_pix: int, k_channels: int, n_channels: int, device: torch.device) -> int:
    """K splits for one convolution: until about LDC_PROGRAMS_PER_SM programs per multiprocessor run
    (counted with 64 x 64 tiles), keeping at least 4 K steps of 32 channels per split."""
    tiles = triton.cdiv(n_pix, 64) * triton.cdiv(n_channels, 64)
    k_steps = 9 * triton.cdiv(k_channels, 32)
    return max(1, min(LDC_PROGRAMS_PER_SM * _multiprocessors(device) // tiles, k_steps // 4))


def conv3x3(inp: torch.Tensor, modulated: torch.Tensor, transposed: bool, config: dict | None = None,
            split_k: int | None = None) -> torch.Tensor:
    """3x3 convolution, padding 1, with the tap-major weight (9, Ci, Co).

    transposed=False: inp (B, Ci, H, W) -> (B, Co, H, W), the forward pass.
    transposed=True:  inp (B, Co, H, W) -> (B, Ci, H, W), the input gradient (flipped, transposed weight).
    The output has inp's memory format (contiguous or channels-last). `config` (an entry of
    conv_configs()) and `split_k` override the tuned tiles and the split heuristic.
    """
    batch, k_channels, height, width = inp.shape
    stride_wt, stride_wi, stride_wo = modulated.stride()
    if transposed:
        n_channels, stride_wk, stride_wn = modulated.shape[1], stride_wo, stride_wi
    else:
        n_channels, stride_wk, stride_wn = modulated.shape[2], stride_wi, stride_wo
    out = _output_like(inp, n_channels)
    n_pix = batch * height * width
    splits = split_k or conv_split_k(n_pix, k_channels, n_channels, inp.device)
    target = out if splits == 1 else torch.empty(splits, batch, n_channels, height, width, device=inp.device,
                                                 dtype=torch.float32)
    target_strides = out.stride() if splits == 1 else target.stride()[1:]
    split_stride = 0 if splits == 1 else target.stride(0)

    def grid(meta):
        return triton.cdiv(n_pix, meta["BLOCK_M"]), triton.cdiv(n_channels, meta["BLOCK_N"]), splits

    args = (inp, modulated, target, n_pix, k_channels, n_channels, height, width, splits, split_stride,
            *inp.stride(), stride_wt, stride_wk, stride_wn, *target_strides)
    _run(ldc_conv3x3_kernel, conv_configs(k_channels, n_channels), grid, args,
         dict(FLIP_TAPS=transposed, INPUT_PRECISION=input_precision(inp.dtype)), config)
    if splits > 1:
        out.copy_(target.sum(0))
    return out


def grad_weight_splits(n_pix: int, c_in: int, c_out: int) -> tuple[int, int]:
    """(number of pixel chunks, pixels per chunk) for the weight-gradient reduction; the same for every
    config (counted with 64 x 64 channel tiles), chunks a multiple of 64 pixels (every BLOCK_P)."""
    tiles = triton.cdiv(c_out, 64) * triton.cdiv(c_in, 64) * 9
    pixel_blocks = triton.cdiv(n_pix, 64)
    wanted = max(1, min(triton.cdiv(GRAD_WEIGHT_TARGET_PROGRAMS, tiles), triton.cdiv(pixel_blocks, 4)))
    pix_per_split = triton.cdiv(pixel_blocks, wanted) * 64
    return triton.cdiv(n_pix, pix_per_split), pix_per_split


def conv3x3_grad_weight(x: torch.Tensor, grad_out: torch.Tensor, config: dict | None = None) -> torch.Tensor:
    """x (B, Ci, H, W), grad_out (B, Co, H, W), any strides -> dL/dW' as fp32 (9, Co, Ci)."""
    batch, c_in, height, width = x.shape
    c_out = grad_out.shape[1]
    n_pix = batch * height * width
    splits, pix_per_split = grad_weight_splits(n_pix, c_in, c_out)
    partial = torch.empty(splits, 9, c_out, c_in, device=x.device, dtype=torch.float32)

    def grid(meta):
        return triton.cdiv(c_out, meta["BLOCK_O"]) * triton.cdiv(c_in, meta["BLOCK_I"]), 9, splits

    args = (x, grad_out, partial, n_pix, c_in, c_out, height, width, pix_per_split, *x.stride(), *grad_out.stride())
    _run(ldc_conv3x3_grad_weight_kernel, grad_weight_configs(c_in, c_out), grid, args,
         dict(INPUT_PRECISION=input_precision(x.dtype)), config)
    return partial.sum(0) if splits > 1 else partial[0]


def ldc_conv2d_forward(x, weight, base_mask, learnable_mask, theta) -> torch.Tensor:
    """x (B, Ci, H, W) -> (B, Co, H, W) in x's dtype."""
    return conv3x3(x, ldc_modulate(weight, base_mask, learnable_mask, theta, x.dtype), transposed=False)


def ldc_conv2d_backward(grad_out, x, weight, base_mask, learnable_mask, theta):
    """-> (grad_x, grad_weight, grad_learnable_mask, grad_theta); the modulated weight is recomputed."""
    modulated = ldc_modulate(weight, base_mask, learnable_mask, theta, x.dtype)
    grad_x = conv3x3(grad_out, modulated, transposed=True)
    grad_modulated = conv3x3_grad_weight(x, grad_out)
    return (grad_x, *ldc_modulate_backward(grad_modulated, weight, base_mask, learnable_mask, theta))


_PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _signature(fn, pointers: dict[str, str], constexprs: dict) -> dict[str, str]:
    return {name: pointers.get(name, "constexpr" if name in constexprs else "i32") for name in fn.arg_names}


def _label(config: dict) -> str:
    return "_".join(f"{k.replace('BLOCK_', '').lower()}{v}" for k, v in config.items()
                    if k.startswith("BLOCK_")) + f"_w{config['num_warps']}s{config['num_stages']}"


def aot_specs() -> list[dict]:
    """Compile specs (kernels/aot.compile_kernel) for the model's channel counts (C -> C, MODEL_DIMS):
    every tuning config of both GEMM kernels in fp32 (TF32 and IEEE) and fp16, the input-gradient
    variant and bf16 at the default config, and the modulation kernels for every parameter /
    activation dtype pair."""
    specs = []

    def add(fn, pointers, constexprs, label, num_warps, num_stages=3):
        specs.append({"fn": fn, "signature": _signature(fn, pointers, constexprs), "constexprs": constexprs,
                      "num_warps": num_warps, "num_stages": num_stages, "label": label})

    # Parameters in the activation dtype (model.half()) or fp32 master weights with fp16/bf16 activations.
    for param_dtype, act_dtype in [(d, d) for d in _PTR] + [(torch.float32, torch.float16),
                                                             (torch.float32, torch.bfloat16)]:
        p, a = _PTR[param_dtype], _PTR[act_dtype]
        add(ldc_modulate_fwd_kernel, {"w_ptr": p, "base_ptr": p, "mask_ptr": p, "theta_ptr": p, "out_ptr": a},
            {"BLOCK_R": LDC_MODULATE_BLOCK_ROWS}, f"ldc_modulate_fwd_{_SHORT[param_dtype]}_to_{_SHORT[act_dtype]}",
            LDC_MODULATE_NUM_WARPS)
    for dtype, p in _PTR.items():
        add(ldc_modulate_bwd_kernel,
            {"grad_ptr": "*fp32", "w_ptr": p, "base_ptr": p, "mask_ptr": p, "theta_ptr": p, "dw_ptr": p,
             "dmask_ptr": p, "dtheta_partial_ptr": "*fp32"},
            {"BLOCK_R": LDC_MODULATE_BLOCK_ROWS}, f"ldc_modulate_bwd_{_SHORT[dtype]}", LDC_MODULATE_NUM_WARPS)
    conv_space = list({tuple(sorted(c.items())): c for dims in MODEL_DIMS
                       for c in conv_configs(dims, dims)}.values())
    grad_space = list({tuple(sorted(c.items())): c for dims in MODEL_DIMS
                       for c in grad_weight_configs(dims, dims)}.values())
    variants = [(torch.float32, "tf32", True), (torch.float32, "ieee", True), (torch.float16, "ieee", True),
                (torch.bfloat16, "ieee", False)]  # (dtype, precision, every config?)
    for dtype, precision, every in variants:
        p, name = _PTR[dtype], f"{_SHORT[dtype]}_{precision}"
        for i, config in enumerate(conv_space if every else conv_space[:1]):
            for flip in (False, True) if i == 0 else (False,):
                add(ldc_conv3x3_kernel, {"x_ptr": p, "w_ptr": p, "y_ptr": p},
                    dict(_meta(config), FLIP_TAPS=flip, INPUT_PRECISION=precision),
                    f"conv3x3_{'grad_input' if flip else 'fwd'}_{name}_{_label(config)}",
                    config["num_warps"], config["num_stages"])
        for config in grad_space if every else grad_space[:1]:
            add(ldc_conv3x3_grad_weight_kernel, {"x_ptr": p, "dy_ptr": p, "partial_ptr": "*fp32"},
                dict(_meta(config), INPUT_PRECISION=precision), f"conv3x3_grad_weight_{name}_{_label(config)}",
                config["num_warps"], config["num_stages"])
    return specs
