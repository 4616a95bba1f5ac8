"""LDC (docs/fusionmamba_spec.md §6): weight modulation and the 3x3 convolution, forward and backward.

Modulation: W'[o, i, t] = W[o, i, t] * (base[o, i, t] - [t == 4] * theta * m[o, i] * S[o, i]),
S = sum_t W[o, i, t]; written tap-major as (9, Ci, Co) in the activation dtype.
Convolution (stride 1, padding 1) as an implicit GEMM: M = pixels, N = out channels,
K = in channels, one K loop per tap, tl.dot with fp32 accumulation. The same kernel computes the
input gradient (taps flipped, weight read transposed). The weight gradient is a second implicit
GEMM (M = out channels, N = in channels, K = pixels), split over pixel chunks into an fp32
partial buffer that is summed afterwards (deterministic, no atomics).
Channel blocks are at least 16 (tl.dot's minimum); smaller channel counts are masked.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

NUM_WARPS = 4  # modulation kernels
CONV_NUM_WARPS = 8  # 64 x 64 tiles: 4 warps spill at sm_80/sm_90 (see aot_specs)
MODULATE_BLOCK_ROWS = 128
GRAD_WEIGHT_TARGET_PROGRAMS = 1024  # split the pixel reduction until roughly this many programs run


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
    N_PIX, C_IN, C_OUT, H, W,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_wt, stride_wk, stride_wn,
    stride_yb, stride_yc, stride_yh, stride_yw,
    FLIP_TAPS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[b, n, h, w] = sum_{tap, k} w[tap', k, n] * x[b, k, h + dh, w + dw] (zero padding 1).

    tap' = 8 - tap when FLIP_TAPS (the input gradient), else tap; x and y at any strides.
    """
    # Pixel coordinates in int32 (cheap div/mod); every address offset below is int64.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < N_PIX
    mask_n = offs_n < C_OUT
    b = (offs_m // (H * W)).to(tl.int64)
    h = (offs_m // W) % H
    w = offs_m % W
    n_k_blocks = tl.cdiv(C_IN, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat loop over (tap, channel block) pipelines better than two nested ones.
    for step in range(9 * n_k_blocks):
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
    y_offs = (b * stride_yb + h.to(tl.int64) * stride_yh + w.to(tl.int64) * stride_yw)[:, None]
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


def _channel_block(channels: int, cap: int) -> int:
    return min(cap, max(16, triton.next_power_of_2(channels)))


def conv_blocks(c_in: int, c_out: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) of ldc_conv3x3_kernel for K = c_in, N = c_out channels."""
    return 64, _channel_block(c_out, 64), _channel_block(c_in, 32)


def grad_weight_blocks(c_in: int, c_out: int) -> tuple[int, int, int]:
    """(BLOCK_O, BLOCK_I, BLOCK_P) of ldc_conv3x3_grad_weight_kernel."""
    return _channel_block(c_out, 64), _channel_block(c_in, 64), 32


def input_precision(dtype: torch.dtype) -> str:
    """tf32 for fp32 activations when PyTorch's own convolutions may use it (its default), else ieee."""
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


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
    ldc_modulate_fwd_kernel[(triton.cdiv(n_rows, MODULATE_BLOCK_ROWS),)](
        weight.contiguous(), base_mask.contiguous(), learnable_mask.contiguous(), theta, out,
        n_rows, c_in, *out.stride(), BLOCK_R=MODULATE_BLOCK_ROWS, num_warps=NUM_WARPS,
    )
    return out


def ldc_modulate_backward(grad_modulated, weight, base_mask, learnable_mask, theta):
    """grad_modulated (9, Co, Ci) -> (dweight, dlearnable_mask, dtheta) in the parameters' dtypes."""
    c_out, c_in = weight.shape[:2]
    n_rows = c_out * c_in
    n_programs = triton.cdiv(n_rows, MODULATE_BLOCK_ROWS)
    grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format)
    grad_mask = torch.empty_like(learnable_mask, memory_format=torch.contiguous_format)
    dtheta_partial = torch.empty(n_programs, device=weight.device, dtype=torch.float32)
    ldc_modulate_bwd_kernel[(n_programs,)](
        grad_modulated, weight.contiguous(), base_mask.contiguous(), learnable_mask.contiguous(), theta,
        grad_weight, grad_mask, dtheta_partial, n_rows, c_in, *grad_modulated.stride(),
        BLOCK_R=MODULATE_BLOCK_ROWS, num_warps=NUM_WARPS,
    )
    grad_theta = dtheta_partial.sum().reshape(theta.shape).to(theta.dtype)
    return grad_weight, grad_mask, grad_theta


def conv3x3(inp: torch.Tensor, modulated: torch.Tensor, transposed: bool) -> torch.Tensor:
    """3x3 convolution, padding 1, with the tap-major weight (9, Ci, Co).

    transposed=False: inp (B, Ci, H, W) -> (B, Co, H, W), the forward pass.
    transposed=True:  inp (B, Co, H, W) -> (B, Ci, H, W), the input gradient (flipped, transposed weight).
    """
    batch, k_channels, height, width = inp.shape
    stride_wt, stride_wi, stride_wo = modulated.stride()
    if transposed:
        n_channels, stride_wk, stride_wn = modulated.shape[1], stride_wo, stride_wi
    else:
        n_channels, stride_wk, stride_wn = modulated.shape[2], stride_wi, stride_wo
    out = _output_like(inp, n_channels)
    n_pix = batch * height * width
    block_m, block_n, block_k = conv_blocks(k_channels, n_channels)
    grid = (triton.cdiv(n_pix, block_m), triton.cdiv(n_channels, block_n))
    ldc_conv3x3_kernel[grid](
        inp, modulated, out, n_pix, k_channels, n_channels, height, width,
        *inp.stride(), stride_wt, stride_wk, stride_wn, *out.stride(),
        FLIP_TAPS=transposed, INPUT_PRECISION=input_precision(inp.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=CONV_NUM_WARPS,
    )
    return out


def grad_weight_splits(n_pix: int, c_in: int, c_out: int) -> tuple[int, int]:
    """(number of pixel chunks, pixels per chunk) for the weight-gradient reduction."""
    block_o, block_i, block_p = grad_weight_blocks(c_in, c_out)
    tiles = triton.cdiv(c_out, block_o) * triton.cdiv(c_in, block_i) * 9
    pixel_blocks = triton.cdiv(n_pix, block_p)
    wanted = max(1, min(triton.cdiv(GRAD_WEIGHT_TARGET_PROGRAMS, tiles), triton.cdiv(pixel_blocks, 4)))
    pix_per_split = triton.cdiv(pixel_blocks, wanted) * block_p
    return triton.cdiv(n_pix, pix_per_split), pix_per_split


def conv3x3_grad_weight(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """x (B, Ci, H, W), grad_out (B, Co, H, W) -> dL/dW' as fp32 (9, Co, Ci)."""
    batch, c_in, height, width = x.shape
    c_out = grad_out.shape[1]
    n_pix = batch * height * width
    splits, pix_per_split = grad_weight_splits(n_pix, c_in, c_out)
    block_o, block_i, block_p = grad_weight_blocks(c_in, c_out)
    partial = torch.empty(splits, 9, c_out, c_in, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(c_out, block_o) * triton.cdiv(c_in, block_i), 9, splits)
    ldc_conv3x3_grad_weight_kernel[grid](
        x, grad_out, partial, n_pix, c_in, c_out, height, width, pix_per_split,
        *x.stride(), *grad_out.stride(), INPUT_PRECISION=input_precision(x.dtype),
        BLOCK_O=block_o, BLOCK_I=block_i, BLOCK_P=block_p, num_warps=CONV_NUM_WARPS,
    )
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


# Model shapes: LDC runs at C = dims (96, 192, 384, 768), C -> C.
MODEL_CHANNELS = (96, 192, 384, 768)
_PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _signature(fn, pointers: dict[str, str], constexprs: dict) -> dict[str, str]:
    names = fn.arg_names
    return {name: pointers.get(name, "constexpr" if name in constexprs else "i32") for name in names}


def aot_specs() -> list[dict]:
    """Compile specs (kernels/aot.compile_kernel) at the block choices the launchers make for the model."""
    specs = []

    def add(fn, pointers, constexprs, label):
        num_warps = NUM_WARPS if fn in (ldc_modulate_fwd_kernel, ldc_modulate_bwd_kernel) else CONV_NUM_WARPS
        specs.append({"fn": fn, "signature": _signature(fn, pointers, constexprs), "constexprs": constexprs,
                      "num_warps": num_warps, "label": label})

    # Parameters in the activation dtype (model.half()) or fp32 master weights with fp16/bf16 activations.
    for param_dtype, act_dtype in [(d, d) for d in _PTR] + [(torch.float32, torch.float16),
                                                             (torch.float32, torch.bfloat16)]:
        p, a = _PTR[param_dtype], _PTR[act_dtype]
        add(ldc_modulate_fwd_kernel,
            {"w_ptr": p, "base_ptr": p, "mask_ptr": p, "theta_ptr": p, "out_ptr": a},
            {"BLOCK_R": MODULATE_BLOCK_ROWS}, f"ldc_modulate_fwd_{_SHORT[param_dtype]}_to_{_SHORT[act_dtype]}")
    for dtype, p in _PTR.items():
        add(ldc_modulate_bwd_kernel,
            {"grad_ptr": "*fp32", "w_ptr": p, "base_ptr": p, "mask_ptr": p, "theta_ptr": p, "dw_ptr": p,
             "dmask_ptr": p, "dtheta_partial_ptr": "*fp32"},
            {"BLOCK_R": MODULATE_BLOCK_ROWS}, f"ldc_modulate_bwd_{_SHORT[dtype]}")
    for dtype, p in _PTR.items():
        precisions = ["tf32", "ieee"] if dtype == torch.float32 else ["ieee"]
        conv_configs = sorted({conv_blocks(c, c) for c in MODEL_CHANNELS})
        grad_configs = sorted({grad_weight_blocks(c, c) for c in MODEL_CHANNELS})
        for precision in precisions:
            for block_m, block_n, block_k in conv_configs:
                for flip in (False, True):
                    add(ldc_conv3x3_kernel, {"x_ptr": p, "w_ptr": p, "y_ptr": p},
                        {"FLIP_TAPS": flip, "INPUT_PRECISION": precision,
                         "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k},
                        f"ldc_conv3x3_{'grad_input' if flip else 'fwd'}_{_SHORT[dtype]}_{precision}"
                        f"_m{block_m}n{block_n}k{block_k}")
            for block_o, block_i, block_p in grad_configs:
                add(ldc_conv3x3_grad_weight_kernel, {"x_ptr": p, "dy_ptr": p, "partial_ptr": "*fp32"},
                    {"INPUT_PRECISION": precision, "BLOCK_O": block_o, "BLOCK_I": block_i, "BLOCK_P": block_p},
                    f"ldc_conv3x3_grad_weight_{_SHORT[dtype]}_{precision}_o{block_o}i{block_i}p{block_p}")
    return specs
