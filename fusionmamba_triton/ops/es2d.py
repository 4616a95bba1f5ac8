"""ES2D skip-sampled 2D scan (gather) and its inverse (merge), FusionMamba's efficient 2D scan;
README, "Design notes".

es2d_scan:  x (B, D, H, W) -> (B, 4, D, L'), L' = ceil(H/2) * ceil(W/2); odd H/W are zero-padded.
es2d_merge: y (B, 4, D, L') -> (B, D, H, W), writing each group back to its sub-grid and cropping.
Groups: k0 (even row, even col) row-major, k1 (odd, even) column-major,
        k2 (even, odd) row-major,           k3 (odd, odd) column-major.

The "torch" and "triton" paths are the custom ops fusionmamba::es2d_scan / fusionmamba::es2d_merge
(0 FLOPs: pure data movement). Their backward passes are each other: merge is the adjoint of scan.
Both accept inputs of any strides (e.g. channels-last data viewed as (B, D, H, W)) and return
contiguous outputs; es2d_merge(..., channels_last=True) writes (B, H, W, D) directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import resolve_backend

# (row parity, column parity, column-major?) for the four groups, in group order.
GROUPS = ((0, 0, False), (1, 0, True), (0, 1, False), (1, 1, True))


def _check_step(step: int) -> None:
    if step != 2:
        raise ValueError(f"only step=2 (the official ES2D) is supported, got step={step}")


def es2d_scan_ref(x: torch.Tensor, step: int = 2) -> torch.Tensor:
    """Ground truth gather: pad to even H/W, take the 4 parity sub-grids, flatten each in its order."""
    _check_step(step)
    if x.dim() != 4:
        raise ValueError(f"x must be (B, D, H, W), got shape {tuple(x.shape)}")
    batch, dim, height, width = x.shape
    x = F.pad(x, (0, width % 2, 0, height % 2))
    seqs = []
    for row, col, column_major in GROUPS:
        sub = x[:, :, row::2, col::2]
        if column_major:
            sub = sub.transpose(2, 3)
        seqs.append(sub.reshape(batch, dim, -1))
    return torch.stack(seqs, dim=1)


def es2d_merge_ref(y: torch.Tensor, H: int, W: int, step: int = 2) -> torch.Tensor:
    """Ground truth merge: scatter each group back to its parity sub-grid, crop to (H, W)."""
    _check_step(step)
    h2, w2 = (H + 1) // 2, (W + 1) // 2
    if y.dim() != 4 or y.shape[1] != 4 or y.shape[3] != h2 * w2:
        raise ValueError(f"y must be (B, 4, D, {h2 * w2}) for H={H}, W={W}, got shape {tuple(y.shape)}")
    batch, _, dim, _ = y.shape
    out = y.new_zeros(batch, dim, 2 * h2, 2 * w2)
    for k, (row, col, column_major) in enumerate(GROUPS):
        sub = y[:, k].reshape(batch, dim, w2, h2).transpose(2, 3) if column_major else y[:, k].reshape(batch, dim, h2, w2)
        out[:, :, row::2, col::2] = sub
    return out[:, :, :H, :W].contiguous()


def _check_floating(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32/float16/bfloat16), got {t.dtype}")


# Channel-major <-> channels-last is a transpose, and ATen's copy_ is only fast (cache-blocked) for a plain
# 2D transpose: one permuted 4D copy walks a (D, L') destination with an L'-float stride and runs at a
# third of the speed. So the channels-last paths move whole pixel rows (contiguous D-vectors) in one copy
# and transpose each (batch, group) slice as a 2D matrix in another: 1.6-3.8x faster at the first
# stage of the base model (64 x 64 x 192), slower for short sequences, hence MIN_ROWS_FOR_2D_TRANSPOSE.
MIN_ROWS_FOR_2D_TRANSPOSE = 256


def _transpose_slices(src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[b, k] = src[b, k].T for (B, 4, m, n) src and (B, 4, n, m) out, one 2D copy per slice."""
    for b in range(src.shape[0]):
        for k in range(src.shape[1]):
            out[b, k].copy_(src[b, k].t())
    return out


def es2d_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """ES2D's gather into pixel rows: (B, D, H, W), any strides -> contiguous (4, B, L', D), each group's pixels
    in its scan order with channels last (odd H / W zero-padded). From channels-last x every copy moves whole
    D-vectors; the fused CPU scan (kernels/es2d_scan_cpu.py) reads this layout, and _scan_torch transposes it."""
    batch, dim, height, width = x.shape
    if height % 2 or width % 2:
        x = F.pad(x, (0, width % 2, 0, height % 2))
    h2, w2 = x.shape[2] // 2, x.shape[3] // 2
    rows = x.new_empty(4, batch, h2 * w2, dim)
    groups = rows.view(2, 2, batch, h2 * w2, dim)  # (col parity, row parity, b, l, d): k = 2c + r
    cells = x.permute(0, 2, 3, 1).unflatten(2, (w2, 2)).unflatten(1, (h2, 2))  # (b, i, r, j, c, d)
    groups[:, 0].unflatten(2, (h2, w2)).copy_(cells[:, :, 0].permute(3, 0, 1, 2, 4))
    groups[:, 1].unflatten(2, (w2, h2)).copy_(cells[:, :, 1].permute(3, 0, 2, 1, 4))
    return rows


def _scan_torch(x: torch.Tensor) -> torch.Tensor:
    """Fast gather: two strided copies (row-major and column-major groups) into the output; from channels-last
    x, into pixel rows first and then one 2D transpose per (batch, group)."""
    batch, dim, height, width = x.shape
    h2, w2 = (height + 1) // 2, (width + 1) // 2
    if x.is_contiguous(memory_format=torch.channels_last):  # a view of contiguous (B, H, W, D) memory
        rows = es2d_gather_rows(x).transpose(0, 1)  # (B, 4, L', D), a view
        return _transpose_slices(rows, x.new_empty(batch, 4, dim, h2 * w2))
    if height % 2 or width % 2:
        x = F.pad(x, (0, width % 2, 0, height % 2))
    out = x.new_empty(batch, 4, dim, h2 * w2)
    groups = out.view(batch, 2, 2, dim, h2 * w2)  # (b, col parity, row parity, d, l): k = 2c + r
    cells = x.unflatten(3, (w2, 2)).unflatten(2, (h2, 2))  # (b, d, i, r, j, c), a view for any strides
    groups[:, :, 0].unflatten(-1, (h2, w2)).copy_(cells[:, :, :, 0].permute(0, 4, 1, 2, 3))
    groups[:, :, 1].unflatten(-1, (w2, h2)).copy_(cells[:, :, :, 1].permute(0, 4, 1, 3, 2))
    return out


def _merge_torch(y: torch.Tensor, height: int, width: int, channels_last: bool) -> torch.Tensor:
    """Fast scatter: the inverse copies of _scan_torch into a padded output, cropped if H/W is odd; into
    channels-last output through transposed (batch, group) slices when sequences are long."""
    batch, _, dim, _ = y.shape
    h2, w2 = (height + 1) // 2, (width + 1) // 2
    shape = (batch, 2 * h2, 2 * w2, dim) if channels_last else (batch, dim, 2 * h2, 2 * w2)
    full = y.new_empty(shape)
    if channels_last and h2 * w2 >= MIN_ROWS_FOR_2D_TRANSPOSE:
        rows = _transpose_slices(y, y.new_empty(batch, 4, h2 * w2, dim)).view(batch, 2, 2, h2 * w2, dim)
        cells = full.unflatten(2, (w2, 2)).unflatten(1, (h2, 2))  # (b, i, r, j, c, d)
        cells[:, :, 0].permute(0, 3, 1, 2, 4).copy_(rows[:, :, 0].unflatten(2, (h2, w2)))
        cells[:, :, 1].permute(0, 3, 2, 1, 4).copy_(rows[:, :, 1].unflatten(2, (w2, h2)))
    else:
        full_bdhw = full.permute(0, 3, 1, 2) if channels_last else full
        cells = full_bdhw.unflatten(3, (w2, 2)).unflatten(2, (h2, 2))
        groups = y.unflatten(1, (2, 2))
        cells[:, :, :, 0].permute(0, 4, 1, 2, 3).copy_(groups[:, :, 0].unflatten(-1, (h2, w2)))
        cells[:, :, :, 1].permute(0, 4, 1, 3, 2).copy_(groups[:, :, 1].unflatten(-1, (w2, h2)))
    if 2 * h2 == height and 2 * w2 == width:
        return full
    cropped = full[:, :height, :width] if channels_last else full[:, :, :height, :width]
    return cropped.contiguous()


def _triton_kernels():
    from fusionmamba_triton.kernels import es2d as es2d_kernels  # needs triton: imported on first use

    return es2d_kernels


@torch.library.custom_op("fusionmamba::es2d_scan", mutates_args=())
def _es2d_scan_op(x: torch.Tensor, backend: str) -> torch.Tensor:
    if backend == "triton":
        return _triton_kernels().es2d_gather(x)
    return _scan_torch(x)


@_es2d_scan_op.register_fake
def _(x, backend):
    batch, dim, height, width = x.shape
    return x.new_empty(batch, 4, dim, ((height + 1) // 2) * ((width + 1) // 2))


@torch.library.custom_op("fusionmamba::es2d_merge", mutates_args=())
def _es2d_merge_op(y: torch.Tensor, H: int, W: int, channels_last: bool, backend: str) -> torch.Tensor:
    if backend == "triton":
        return _triton_kernels().es2d_scatter(y, H, W, channels_last)
    return _merge_torch(y, H, W, channels_last)


@_es2d_merge_op.register_fake
def _(y, H, W, channels_last, backend):
    batch, _, dim, _ = y.shape
    return y.new_empty(batch, H, W, dim) if channels_last else y.new_empty(batch, dim, H, W)


def _scan_setup_context(ctx, inputs, output):
    x, ctx.backend = inputs
    ctx.height, ctx.width = x.shape[-2:]


def _scan_backward(ctx, grad):
    return _es2d_merge_op(grad, ctx.height, ctx.width, False, ctx.backend), None


def _merge_setup_context(ctx, inputs, output):
    _, _, _, ctx.channels_last, ctx.backend = inputs


def _merge_backward(ctx, grad):
    grad_bdhw = grad.permute(0, 3, 1, 2) if ctx.channels_last else grad
    return _es2d_scan_op(grad_bdhw, ctx.backend), None, None, None, None


_es2d_scan_op.register_autograd(_scan_backward, setup_context=_scan_setup_context)
_es2d_merge_op.register_autograd(_merge_backward, setup_context=_merge_setup_context)


def es2d_scan(x: torch.Tensor, step: int = 2, backend: str = "auto") -> torch.Tensor:
    """(B, D, H, W), any strides -> contiguous (B, 4, D, L'), L' = ceil(H/2) * ceil(W/2)."""
    _check_step(step)
    _check_floating(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must be (B, D, H, W), got shape {tuple(x.shape)}")
    backend = resolve_backend(backend, x.device)
    if backend == "reference":
        return es2d_scan_ref(x, step)
    return _es2d_scan_op(x, backend)


def es2d_merge(y: torch.Tensor, H: int, W: int, step: int = 2, backend: str = "auto",
               channels_last: bool = False) -> torch.Tensor:
    """(B, 4, D, L'), any strides -> contiguous (B, D, H, W), or (B, H, W, D) when channels_last."""
    _check_step(step)
    _check_floating(y, "y")
    if not (isinstance(H, int) and isinstance(W, int) and H > 0 and W > 0):
        raise ValueError(f"H and W must be positive ints, got H={H!r}, W={W!r}")
    seq_len = ((H + 1) // 2) * ((W + 1) // 2)
    if y.dim() != 4 or y.shape[1] != 4 or y.shape[3] != seq_len:
        raise ValueError(f"y must be (B, 4, D, {seq_len}) for H={H}, W={W}, got shape {tuple(y.shape)}")
    backend = resolve_backend(backend, y.device)
    if backend == "reference":
        out = es2d_merge_ref(y, H, W, step)
        return out.permute(0, 2, 3, 1).contiguous() if channels_last else out
    return _es2d_merge_op(y, H, W, channels_last, backend)
