"""ES2D skip-sampled gather (scan) and its inverse scatter (merge).

Contract (the reference is fusionmamba_triton.ops.es2d_scan_ref / es2d_merge_ref):
    gather:  x (B, D, H, W) at any strides -> (B, 4, D, L) contiguous, L = ceil(H/2) * ceil(W/2);
             odd H/W read zeros in the padding cells.
    scatter: y (B, 4, D, L) at any strides -> (B, D, H, W) contiguous, or (B, H, W, D) contiguous when
             channels_last; padding cells are dropped. The scatter is the adjoint of the gather.

Both kernels tile (channels x sequence positions) and visit the 4 parity groups in one program.
Group k has row parity r = k % 2, column parity c = k // 2 and is column-major when r == 1,
so sequence index l maps to sub-grid cell (i, j) = divmod(l, w2) (row-major) or
(l % h2, l // h2) (column-major), i.e. pixel (2i + r, 2j + c).
Input and output strides are arguments, so channels-first and channels-last tensors both work
without a copy; offsets are computed in int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import ES2D_NUM_WARPS as NUM_WARPS
from .configs import es2d_blocks, model_shapes


@triton.jit
def _es2d_pixel_offsets(offs_l, k: tl.constexpr, h2, w2, L, H, W, stride_h, stride_w):
    """Offsets and validity of the pixels read/written by sequence positions offs_l of group k."""
    if k % 2 == 1:  # odd-row groups are column-major
        i = offs_l % h2
        j = offs_l // h2
    else:
        i = offs_l // w2
        j = offs_l % w2
    row = 2 * i + (k % 2)
    col = 2 * j + (k // 2)
    inside = (offs_l < L) & (row < H) & (col < W)
    return row * stride_h + col * stride_w, inside


@triton.jit
def es2d_gather_kernel(
    x_ptr, out_ptr,
    D, H, W, h2, w2, L,
    stride_xb, stride_xd, stride_xh, stride_xw,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """x (B, D, H, W) any strides -> out (B, 4, D, L) contiguous; padding cells read as 0."""
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_l = pid_l.to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = pid_d.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    x_base = x_ptr + pid_b * stride_xb + offs_d[:, None] * stride_xd
    out_rows = pid_b * 4 * D + offs_d  # int64 row of group 0 in the output viewed as (B * 4 * D, L)
    for k in tl.static_range(4):
        pix, inside = _es2d_pixel_offsets(offs_l, k, h2, w2, L, H, W, stride_xh, stride_xw)
        vals = tl.load(x_base + pix[None, :], mask=mask_d[:, None] & inside[None, :], other=0.0)
        tl.store(out_ptr + (out_rows + k * D)[:, None] * L + offs_l[None, :], vals,
                 mask=mask_d[:, None] & (offs_l < L)[None, :])


@triton.jit
def es2d_scatter_kernel(
    y_ptr, out_ptr,
    D, H, W, h2, w2, L,
    stride_yb, stride_yk, stride_yd, stride_yl,
    stride_ob, stride_od, stride_oh, stride_ow,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """y (B, 4, D, L) any strides -> out (B, D, H, W) at the given strides; padding cells dropped."""
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_l = pid_l.to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = pid_d.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    y_base = y_ptr + pid_b * stride_yb + offs_d[:, None] * stride_yd + offs_l[None, :] * stride_yl
    out_base = out_ptr + pid_b * stride_ob + offs_d[:, None] * stride_od
    for k in tl.static_range(4):
        pix, inside = _es2d_pixel_offsets(offs_l, k, h2, w2, L, H, W, stride_oh, stride_ow)
        mask = mask_d[:, None] & inside[None, :]
        vals = tl.load(y_base + k * stride_yk, mask=mask)
        tl.store(out_base + pix[None, :], vals, mask=mask)


def _grid(batch: int, dim: int, seq_len: int) -> tuple[tuple[int, int, int], int, int]:
    block_d, block_l = es2d_blocks(dim, seq_len)
    return (triton.cdiv(seq_len, block_l), triton.cdiv(dim, block_d), batch), block_d, block_l


def es2d_gather(x: torch.Tensor) -> torch.Tensor:
    """x (B, D, H, W), any strides -> (B, 4, D, L') contiguous, L' = ceil(H/2) * ceil(W/2)."""
    batch, dim, height, width = x.shape
    h2, w2 = (height + 1) // 2, (width + 1) // 2
    out = torch.empty(batch, 4, dim, h2 * w2, device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    grid, block_d, block_l = _grid(batch, dim, h2 * w2)
    es2d_gather_kernel[grid](
        x, out, dim, height, width, h2, w2, h2 * w2, *x.stride(),
        BLOCK_D=block_d, BLOCK_L=block_l, num_warps=NUM_WARPS,
    )
    return out


def es2d_scatter(y: torch.Tensor, height: int, width: int, channels_last: bool = False) -> torch.Tensor:
    """y (B, 4, D, L'), any strides -> (B, D, H, W) contiguous, or (B, H, W, D) if channels_last."""
    batch, _, dim, seq_len = y.shape
    h2, w2 = (height + 1) // 2, (width + 1) // 2
    if channels_last:
        out = torch.empty(batch, height, width, dim, device=y.device, dtype=y.dtype)
        out_bdhw = out.permute(0, 3, 1, 2)
    else:
        out = out_bdhw = torch.empty(batch, dim, height, width, device=y.device, dtype=y.dtype)
    if out.numel() == 0:
        return out
    grid, block_d, block_l = _grid(batch, dim, seq_len)
    es2d_scatter_kernel[grid](
        y, out, dim, height, width, h2, w2, seq_len, *y.stride(), *out_bdhw.stride(),
        BLOCK_D=block_d, BLOCK_L=block_l, num_warps=NUM_WARPS,
    )
    return out


_TRITON_DTYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}


def aot_specs() -> list[dict]:
    """Compile specs (for kernels/aot.compile_kernel) at the block choices the launchers make for the model."""
    blocks = sorted({es2d_blocks(s["d_inner"], s["L"]) for s in model_shapes()})
    specs = []
    for dtype, ptr in _TRITON_DTYPES.items():
        for block_d, block_l in blocks:
            constexprs = {"BLOCK_D": block_d, "BLOCK_L": block_l}
            for fn in (es2d_gather_kernel, es2d_scatter_kernel):
                signature = {name: ptr if name.endswith("_ptr") else "constexpr" if name in constexprs else "i32"
                             for name in fn.arg_names}
                specs.append({"fn": fn, "signature": signature, "constexprs": constexprs,
                              "num_warps": NUM_WARPS,
                              "label": f"{fn.__name__}_{dtype}_d{block_d}_l{block_l}"})
    return specs
