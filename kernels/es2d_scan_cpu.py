"""ES2D's 4-group selective scan and merge in one CPU pass (inference), compiled with numba.

The unfused CPU path transposes the channels-last activations into (batch, 4D, L') rows for the scan, copies B
and C time-major, and transposes the scan's output back into channels-last pixels. Here the scan reads the
channels-last rows where they are: one work item owns 32 channels (16 where D is not a multiple of 32) of one
(group, batch) row and keeps their state h (N x 32) in registers / L1, vectorised across the channels. At each
step it reads the channels' inputs and step sizes as two vectors each and B_t, C_t as N scalars, and writes y
straight into the output pixel that ES2D's merge would put it in: no horizontal sums, no transposes.

Layouts (C-contiguous; `es2d_selective_scan_fwd` prepares them). rows and x_dbl are fp32, or bf16 passed as their
int16 bit patterns (under autocast they come from bf16 products: widening them in the step loop is one shift per
value, where casting them to fp32 beforehand took 8% of a bf16 forward). The rest is fp32.
    rows, dts: (4, batch, L', D)  each group's inputs in its scan order, channels last (ops.es2d_gather_rows),
                                  and their step sizes before the bias and softplus (the dt projection)
    x_dbl:     (4, batch, L', S)  the x projection, S = R + 2N: B_t at [R : R + N], C_t after it
    a_t:       (4, N, D)          A * log2(e) (negative), transposed per group       skip, bias: (4, D)
    pixels:    (4, L') int64      where step t of group k lands in the (H * W) output, -1 in the padding of odd
                                  H / W                                     out: (batch, H * W, D)
(The dt projection, R multiply-adds per channel and step, stays a matrix product outside: inside the step loop
it did not vectorise well and doubled the time at R = 24.) Forward only, the "mamba" discretisation with delta
softplus (what the model uses); training takes the unfused ops, which have backward passes.
"""
from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import types
from numba.extending import overload

from .numba_runtime import JIT_FLAGS, use_torch_thread_count
from .selective_scan_cpu import _LOG2E, _P2, _P3, _P4, _P5, _P6, _array, _int32_bits_as_float32, _softplus

LANES = 16  # channels per work item: one AVX-512 vector (two, 32 channels, where D is a multiple of 32)
UNROLL = 8  # states advanced per pass of the step loop's inner loop
# Unsigned offsets 1..7: an int literal added to a uint64 index makes it signed, with a wrap-around check per load.
_U1, _U2, _U3, _U4, _U5, _U6, _U7 = (np.uint64(i) for i in range(1, 8))


def _widen(value):
    """A float32 from an fp32 value or from a bf16's int16 bit pattern (its top 16 bits)."""


@overload(_widen, inline="always")
def _widen_overload(value):
    if isinstance(value, types.Integer):
        return lambda value: _int32_bits_as_float32(np.int32(value) << np.int32(16))
    return lambda value: np.float32(value)


# 2^f ~ 1 + f E1 + ... + f^6 E6 on [-1/2, 1/2]: selective_scan_cpu's fit of exp(g) with g = f ln 2, so E_i = P_i ln2^i
# (1.5e-8 before fp32 rounding).
_E1, _E2, _E3, _E4, _E5, _E6 = (p * math.log(2.0) ** i for i, p in enumerate((1.0, _P2, _P3, _P4, _P5, _P6), 1))


@numba.njit(inline="always", **JIT_FLAGS)
def _decay(x):
    """2^x for x <= 0 (step * A * log2(e): the launcher scales A), clamped at 2^-125: 2^k * p(x - k), k = rint(x).
    Base 2 spares most of exp's range reduction (x * log2(e), and x - k ln 2 in two parts): 17 vector operations
    per state update instead of 19."""
    x = max(x, np.float32(-125.0))
    k = np.rint(x)
    f = x - k
    p = np.float32(_E6)
    p = p * f + np.float32(_E5)
    p = p * f + np.float32(_E4)
    p = p * f + np.float32(_E3)
    p = p * f + np.float32(_E2)
    p = p * f + np.float32(_E1)
    p = p * f + np.float32(1.0)
    return p * _int32_bits_as_float32((np.int32(k) + np.int32(127)) << np.int32(23))


@numba.njit(inline="always", **JIT_FLAGS)
def _advance(h, a, n, c, step, x, b_n):
    """h[n, c] <- 2^(step * a[n, c]) * h[n, c] + x * b_n (a = A log2(e): the decay exp(step A)); returns the new
    state."""
    state = _decay(step * a[n, c]) * h[n, c] + x * b_n
    h[n, c] = state
    return state


@functools.lru_cache(maxsize=None)
def es2d_scan_kernel(lanes: int):
    """The kernel for work items of `lanes` channels (16 or 32: one or two AVX-512 vectors), a compile-time
    constant. Two vectors per item give the out-of-order core two independent chains of dependent operations
    to interleave: 10-13% faster than one where D allows it."""

    @numba.njit(parallel=True, cache=True, **JIT_FLAGS)
    def scan_fwd(rows, dts, x_dbl, a_t, skip, bias, pixels, out, dt_rank):
        groups, batch, length, dim = rows.shape
        proj = x_dbl.shape[3]
        dstate = a_t.shape[1]
        blocks = dim // lanes
        for item in numba.prange(groups * batch * blocks):
            k = item // (batch * blocks)
            rest = item - k * batch * blocks
            b = rest // blocks
            c0 = (rest - b * blocks) * lanes
            # Flat rows and unsigned offsets: numba's negative-index fix-up is not paid in the step loop.
            rows_flat, dts_flat, proj_flat = rows[k, b].ravel(), dts[k, b].ravel(), x_dbl[k, b].ravel()
            out_flat, pixel_row = out[b].ravel(), pixels[k]
            a = np.empty((dstate, lanes), np.float32)
            for n in range(dstate):
                for c in range(lanes):
                    a[n, c] = a_t[k, n, c0 + c]
            skip_c, bias_c = np.empty(lanes, np.float32), np.empty(lanes, np.float32)
            for c in range(lanes):
                skip_c[c] = skip[k, c0 + c]
                bias_c[c] = bias[k, c0 + c]
            h = np.zeros((dstate, lanes), np.float32)
            step, x, y = np.empty(lanes, np.float32), np.empty(lanes, np.float32), np.empty(lanes, np.float32)
            at, proj_at = np.uint64(c0), np.uint64(dt_rank)  # offsets of this step's inputs and of its B_t (C_t: + N)
            for t in range(length):
                for c in range(lanes):
                    step[c] = _softplus(dts_flat[at + np.uint64(c)] + bias_c[c])
                    u = _widen(rows_flat[at + np.uint64(c)])
                    x[c] = step[c] * u
                    y[c] = skip_c[c] * u
                # Eight states per pass with a tree of sums into y: y lives in memory (numba's arrays may alias, so
                # LLVM keeps it there), and one y += per state made the store-load round trip the critical path.
                n, b_at, c_at = 0, proj_at, proj_at + np.uint64(dstate)
                while n + UNROLL <= dstate:
                    b0, b1, b2, b3 = (_widen(proj_flat[b_at]), _widen(proj_flat[b_at + _U1]),
                                      _widen(proj_flat[b_at + _U2]), _widen(proj_flat[b_at + _U3]))
                    b4, b5, b6, b7 = (_widen(proj_flat[b_at + _U4]), _widen(proj_flat[b_at + _U5]),
                                      _widen(proj_flat[b_at + _U6]), _widen(proj_flat[b_at + _U7]))
                    q0, q1, q2, q3 = (_widen(proj_flat[c_at]), _widen(proj_flat[c_at + _U1]),
                                      _widen(proj_flat[c_at + _U2]), _widen(proj_flat[c_at + _U3]))
                    q4, q5, q6, q7 = (_widen(proj_flat[c_at + _U4]), _widen(proj_flat[c_at + _U5]),
                                      _widen(proj_flat[c_at + _U6]), _widen(proj_flat[c_at + _U7]))
                    for c in range(lanes):
                        s, v = step[c], x[c]
                        y[c] += (((q0 * _advance(h, a, n, c, s, v, b0) + q1 * _advance(h, a, n + 1, c, s, v, b1))
                                  + (q2 * _advance(h, a, n + 2, c, s, v, b2)
                                     + q3 * _advance(h, a, n + 3, c, s, v, b3)))
                                 + ((q4 * _advance(h, a, n + 4, c, s, v, b4) + q5 * _advance(h, a, n + 5, c, s, v, b5))
                                    + (q6 * _advance(h, a, n + 6, c, s, v, b6)
                                       + q7 * _advance(h, a, n + 7, c, s, v, b7))))
                    n += UNROLL
                    b_at += np.uint64(UNROLL)
                    c_at += np.uint64(UNROLL)
                while n < dstate:  # N not a multiple of UNROLL
                    b_n, c_n = _widen(proj_flat[b_at]), _widen(proj_flat[c_at])
                    for c in range(lanes):
                        y[c] += c_n * _advance(h, a, n, c, step[c], x[c], b_n)
                    n += 1
                    b_at += np.uint64(1)
                    c_at += np.uint64(1)
                pixel = pixel_row[t]
                if pixel >= 0:
                    dst = np.uint64(pixel * dim + c0)
                    for c in range(lanes):
                        out_flat[dst + np.uint64(c)] = y[c]
                at += np.uint64(dim)
                proj_at += np.uint64(proj)

    return scan_fwd


@functools.lru_cache(maxsize=16)
def output_pixels(height: int, width: int) -> np.ndarray:
    """(4, L') int64: the flat (H * W) index that step t of group k is merged into, -1 in the zero padding of
    odd H / W. Groups as ES2D's: (even row, even col) row-major, (odd, even) column-major, (even, odd)
    row-major, (odd, odd) column-major."""
    h2, w2 = (height + 1) // 2, (width + 1) // 2
    i, j = np.meshgrid(np.arange(h2), np.arange(w2), indexing="ij")  # (h2, w2) sub-grid coordinates
    pixels = []
    for row, col, column_major in ((0, 0, False), (1, 0, True), (0, 1, False), (1, 1, True)):
        r, c = 2 * i + row, 2 * j + col
        flat = np.where((r < height) & (c < width), r * width + c, -1)
        pixels.append((flat.T if column_major else flat).reshape(-1))
    out = np.stack(pixels).astype(np.int64)
    out.setflags(write=False)
    return out


def _fp32_or_bf16_bits(t):
    """A C-contiguous numpy array of a CPU tensor for the kernel: a bf16 tensor's int16 bit patterns, else fp32."""
    import torch

    if t.dtype == torch.bfloat16:
        return np.ascontiguousarray(t.detach().view(torch.int16).numpy())
    return _array(t)


def es2d_selective_scan_fwd(rows, dts, x_dbl, A_logs, Ds, dt_projs_bias, height: int, width: int):
    """The fused forward on CPU tensors: rows, dts (4, batch, L', D) and x_dbl (4, batch, L', R + 2N) in any float
    dtype (bf16 rows and x_dbl are read as they are, the others as fp32), A_logs (4D, N), Ds and dt_projs_bias (4D,)
    as SS2D registers them; D a multiple of 16. Returns (batch, H, W, D) fp32, what
    es2d_merge(selective_scan(...), channels_last=True) returns."""
    import torch

    groups, batch, _, dim = rows.shape
    if groups != 4 or dim % LANES:
        raise ValueError(f"rows must be (4, batch, L', D) with D a multiple of {LANES}, got {tuple(rows.shape)}")
    dstate = A_logs.shape[-1]
    out = torch.empty(batch, height, width, dim, dtype=torch.float32)
    use_torch_thread_count()
    kernel = es2d_scan_kernel(2 * LANES if dim % (2 * LANES) == 0 else LANES)
    kernel(_fp32_or_bf16_bits(rows), _array(dts), _fp32_or_bf16_bits(x_dbl),
           _array(-torch.exp(A_logs.detach().float()).mul(_LOG2E).view(groups, dim, dstate).transpose(1, 2)),
           _array(Ds.view(groups, dim)), _array(dt_projs_bias.view(groups, dim)), output_pixels(height, width),
           out.numpy(), x_dbl.shape[-1] - 2 * dstate)
    return out
