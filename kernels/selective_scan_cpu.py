"""Selective scan (Mamba S6) forward and backward for CPUs, compiled with numba.

One work item owns whole channels: the state h (N values) stays in registers / L1 while the loop
walks the sequence once, reading u, delta, B and C and writing y, so nothing of size (batch, D, L, N)
is ever materialised. The N-loop (N padded to a multiple of LANES = 16, one AVX-512 vector) vectorises
because exp, softplus and sigmoid are computed inline (_exp: 2^k * p(f)) instead of
scalar libm calls, and the discretisation and padded N are compile-time constants (one kernel each).

The forward optionally saves the state entering every CHUNK steps; the backward walks each channel's
chunks in reverse, recomputes the chunk's states from the saved one, and runs the reverse recurrence
dh_{t-1} = a_t * dh_t + C_{t-1} * dy_{t-1} (the design of the Triton kernel in selective_scan.py).

Layouts (all C-contiguous fp32; the launchers below prepare them from torch tensors):
    u, delta, z, out, du, ddelta, dz, dout: (batch, D, L)     A: (D, N)     D_skip, bias: (D,)
    B, C: (batch_b, G, L_b, N), time-major so that the N-loop is contiguous; channel d of batch row b
      at time t reads B[b * b_batch, d // b_div, t * b_time]:
        constant (D, N)    -> (1, D, 1, N),     b_batch = 0, b_div = 1,      b_time = 0
        grouped / variable -> (batch, G, L, N), b_batch = 1, b_div = D // G, b_time = 1
    states: (batch, D, n_chunks, N), the state entering each chunk      last: (batch, D, N)
N is zero-padded to a multiple of LANES (A = 0 and B = C = 0 there: those states stay 0 and add
nothing). Absent optional inputs are passed as empty arrays with their flag False.
"""
from __future__ import annotations

import functools
import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .numba_runtime import JIT_FLAGS, use_torch_thread_count

LANES = 16
CHUNK = 64  # steps between saved states: the backward's recompute buffers (2 x CHUNK x N fp32) fit in L1

# exp(f) ~ 1 + f + f^2 P2 + ... + f^6 P6 on [-ln2/2, ln2/2]: a relative-error fit of our own (2e-9 before
# fp32 rounding), evaluated by Horner's rule.
_P2, _P3, _P4, _P5, _P6 = 0.49999994, 0.16666432, 0.041668002, 0.0083741592, 0.0013843658
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375  # ln 2 split so that k * _LN2_HI is exact (Cody and Waite)
_LN2_LO = -2.12194440e-4


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (an LLVM bitcast, which vectorises)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@numba.njit(inline="always", **JIT_FLAGS)
def _exp(x):
    """float32 exp within ~2 ulp for x in [-87, 88]; inputs outside are clamped (exp(-87) = 1.6e-38)."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    # np.floor keeps k a float32: math.floor returns an int64, and its round trip through int64 costs a
    # quarter of the scan's inner loop (int64 <-> float conversions are not single AVX-512 instructions).
    k = np.floor(x * np.float32(_LOG2E) + np.float32(0.5))
    f = x - k * np.float32(_LN2_HI) - k * np.float32(_LN2_LO)
    p = np.float32(_P6)
    p = p * f + np.float32(_P5)
    p = p * f + np.float32(_P4)
    p = p * f + np.float32(_P3)
    p = p * f + np.float32(_P2)
    p = p * f + np.float32(1.0)
    p = p * f + np.float32(1.0)
    return p * _int32_bits_as_float32((np.int32(k) + np.int32(127)) << np.int32(23))


@numba.njit(inline="always", **JIT_FLAGS)
def _softplus(x):
    """log(1 + exp(x)) within 3e-7, the identity above 20 (as torch and mamba-ssm).

    max(x, 0) + log1p(e) with e = exp(-|x|) in (0, 1], and log1p(e) = 2 atanh(s) = 2 (s + s^3/3 + ...),
    s = e / (2 + e) <= 1/3, truncated after s^13 (error < 2e-8)."""
    e = _exp(-abs(x))
    s = e / (np.float32(2.0) + e)
    w = s * s
    p = np.float32(1.0 / 13.0)
    p = p * w + np.float32(1.0 / 11.0)
    p = p * w + np.float32(1.0 / 9.0)
    p = p * w + np.float32(1.0 / 7.0)
    p = p * w + np.float32(1.0 / 5.0)
    p = p * w + np.float32(1.0 / 3.0)
    p = p * w + np.float32(1.0)
    return x if x > np.float32(20.0) else max(x, np.float32(0.0)) + np.float32(2.0) * s * p


@numba.njit(inline="always", **JIT_FLAGS)
def _sigmoid(x):
    return np.float32(1.0) / (np.float32(1.0) + _exp(-x))


@numba.njit(inline="always", **JIT_FLAGS)
def _expm1(x):
    """float32 exp(x) - 1 within ~3 ulp: its Taylor series to x^8 for |x| < 1/2 (where exp(x) - 1 would cancel),
    _exp(x) - 1 beyond. Both are computed and one selected, so the N-loop still vectorises (math.expm1 is a
    scalar libm call)."""
    p = np.float32(1.0 / 40320.0)
    p = p * x + np.float32(1.0 / 5040.0)
    p = p * x + np.float32(1.0 / 720.0)
    p = p * x + np.float32(1.0 / 120.0)
    p = p * x + np.float32(1.0 / 24.0)
    p = p * x + np.float32(1.0 / 6.0)
    p = p * x + np.float32(0.5)
    p = p * x + np.float32(1.0)
    small = p * x
    large = _exp(x) - np.float32(1.0)
    return small if abs(x) < np.float32(0.5) else large


@numba.njit(inline="always", **JIT_FLAGS)
def _zoh_gain(dl, a):
    """(exp(dl * a) - 1) / a, with its limit dl at a == 0."""
    safe_a = a if a != np.float32(0.0) else np.float32(1.0)
    gain = _expm1(dl * a) / safe_a
    return gain if a != np.float32(0.0) else dl


@numba.njit(inline="always", **JIT_FLAGS)
def _step_sizes(delta_row, bias, softplus, out):
    """out[t] = delta_row[t] + bias, through softplus if asked: one vectorised pass over a row."""
    if softplus:
        for t in range(out.shape[0]):
            out[t] = _softplus(delta_row[t] + bias)
    else:
        for t in range(out.shape[0]):
            out[t] = delta_row[t] + bias


@functools.lru_cache(maxsize=None)
def scan_fwd_kernel(zoh: bool, width: int):
    """The forward kernel for one discretisation and state width (N padded to a multiple of LANES). Both are
    compile-time constants: a runtime branch in the N-loop halves its speed, and a constant trip count lets
    it become whole vectors."""

    @numba.njit(parallel=True, cache=True, **JIT_FLAGS)
    def scan_fwd(u, delta, A, B, C, D_skip, z, bias, out, last, states,
                 b_batch, b_div, b_time, c_batch, c_div, c_time, has_d, has_z, has_bias, softplus, save_states):
        batch, dim, length = u.shape
        for row in numba.prange(batch * dim):
            b = row // dim
            d = row - b * dim
            a_row = A[d]
            # B_t / C_t as offsets into flat rows: unsigned offsets spare every step numba's negative-index
            # fix-up, which with the 2-D indexing was a third of the loop's instructions.
            b_flat, c_flat = B[b * b_batch, d // b_div].ravel(), C[b * c_batch, d // c_div].ravel()
            b_stride, c_stride = np.uint64(b_time * width), np.uint64(c_time * width)
            b_at, c_at = np.uint64(0), np.uint64(0)
            skip = D_skip[d] if has_d else np.float32(0.0)
            steps = np.empty(length, np.float32)
            _step_sizes(delta[b, d], bias[d] if has_bias else np.float32(0.0), softplus, steps)
            u_row, out_row = u[b, d], out[b, d]
            h = np.zeros(width, np.float32)
            for t in range(length):
                if save_states and t % CHUNK == 0:
                    states[b, d, t // CHUNK, :] = h
                dl = steps[t]
                ut = u_row[t]
                y = skip * ut
                if zoh:
                    for n in range(width):
                        h[n] = _exp(dl * a_row[n]) * h[n] + _zoh_gain(dl, a_row[n]) * b_flat[b_at + np.uint64(n)] * ut
                        y += c_flat[c_at + np.uint64(n)] * h[n]
                else:
                    x = dl * ut
                    for n in range(width):
                        h[n] = _exp(dl * a_row[n]) * h[n] + x * b_flat[b_at + np.uint64(n)]
                        y += c_flat[c_at + np.uint64(n)] * h[n]
                out_row[t] = y
                b_at += b_stride
                c_at += c_stride
            if has_z:  # a pass of its own: inside the step loop its scalar sigmoid cost a fifth of the time
                z_row = z[b, d]
                for t in range(length):
                    out_row[t] *= z_row[t] * _sigmoid(z_row[t])
            last[b, d, :] = h

    return scan_fwd


@functools.lru_cache(maxsize=None)
def scan_bwd_kernel(zoh: bool, width: int):
    """The backward kernel for one discretisation and state width.

    Work item (b, k) owns channels k*block .. (k+1)*block of batch row b (never straddling a B/C group).
    Per-row results: du, ddelta, dz, and dA_rows / dD_rows / dbias_rows (batch, D, ...) that the caller
    sums over the batch. dB_part / dC_part: (batch, D, 1, N) per row when B / C is constant, else
    (batch, D // block, L, N) per work item, which the caller sums over each group's items."""

    @numba.njit(parallel=True, cache=True, **JIT_FLAGS)
    def scan_bwd(u, delta, A, B, C, D_skip, z, bias, states, dout, dlast,
                 du, ddelta, dz, dA_rows, dB_part, dC_part, dD_rows, dbias_rows,
                 b_batch, b_div, b_time, c_batch, c_div, c_time, block,
                 has_d, has_z, has_bias, has_dlast, softplus):
        batch, dim, length = u.shape
        n_blocks = dim // block
        n_chunks = (length + CHUNK - 1) // CHUNK
        for item in numba.prange(batch * n_blocks):
            b = item // n_blocks
            k = item - b * n_blocks
            steps = np.empty(length, np.float32)
            hs = np.empty((CHUNK, width), np.float32)  # the states h_t of the chunk being walked
            decays = np.empty((CHUNK, width), np.float32)
            dh = np.empty(width, np.float32)  # the gradient reaching h_t from the steps after t
            dA_acc = np.empty(width, np.float32)
            for d in range(k * block, (k + 1) * block):
                a_row, b_rows, c_rows = A[d], B[b * b_batch, d // b_div], C[b * c_batch, d // c_div]
                # Variable B / C: this item's rows of the partial sums; constant: this channel's one row.
                db_rows = dB_part[b, k] if b_time else dB_part[b, d]
                dc_rows = dC_part[b, k] if c_time else dC_part[b, d]
                if b_time == 0:
                    db_rows[:] = 0.0
                if c_time == 0:
                    dc_rows[:] = 0.0
                skip = D_skip[d] if has_d else np.float32(0.0)
                bias_d = bias[d] if has_bias else np.float32(0.0)
                _step_sizes(delta[b, d], bias_d, softplus, steps)
                dD_acc = np.float32(0.0)
                dA_acc[:] = 0.0
                if has_dlast:
                    dh[:] = dlast[b, d]
                else:
                    dh[:] = 0.0
                for c in range(n_chunks - 1, -1, -1):
                    t0 = c * CHUNK
                    n_steps = min(CHUNK, length - t0)
                    # Recompute the chunk's states from its saved entry state.
                    for i in range(n_steps):
                        t = t0 + i
                        dl = steps[t]
                        ut = u[b, d, t]
                        b_t, h_t, decay_t = b_rows[t * b_time], hs[i], decays[i]
                        prev = hs[i - 1] if i > 0 else states[b, d, c]
                        if zoh:
                            for n in range(width):
                                decay_t[n] = _exp(dl * a_row[n])
                                h_t[n] = decay_t[n] * prev[n] + _zoh_gain(dl, a_row[n]) * b_t[n] * ut
                        else:
                            x = dl * ut
                            for n in range(width):
                                decay_t[n] = _exp(dl * a_row[n])
                                h_t[n] = decay_t[n] * prev[n] + x * b_t[n]
                    # Walk it backwards.
                    for i in range(n_steps - 1, -1, -1):
                        t = t0 + i
                        dl = steps[t]
                        ut = u[b, d, t]
                        b_t, c_t, h_t, decay_t = b_rows[t * b_time], c_rows[t * c_time], hs[i], decays[i]
                        db_t, dc_t = db_rows[t * b_time], dc_rows[t * c_time]
                        prev = hs[i - 1] if i > 0 else states[b, d, c]
                        dy = dout[b, d, t]
                        if has_z:
                            zt = z[b, d, t]
                            y = skip * ut
                            for n in range(width):
                                y += c_t[n] * h_t[n]
                            sig = _sigmoid(zt)
                            dz[b, d, t] = dy * y * sig * (np.float32(1.0) + zt * (np.float32(1.0) - sig))
                            dy = dy * zt * sig
                        ddl = np.float32(0.0)
                        du_t = skip * dy
                        if zoh:
                            for n in range(width):
                                dh_n = dh[n] + c_t[n] * dy  # the total gradient reaching h_t
                                g_decay = dh_n * prev[n] * decay_t[n]  # through the decay, d/d(delta * A)
                                dx_b = dh_n * b_t[n]
                                gain = _zoh_gain(dl, a_row[n])
                                if a_row[n] == np.float32(0.0):
                                    dgain_da = np.float32(0.5) * dl * dl
                                else:
                                    dgain_da = (dl * decay_t[n] - gain) / a_row[n]
                                ddl += g_decay * a_row[n] + dx_b * ut * decay_t[n]
                                dA_acc[n] += g_decay * dl + dx_b * ut * dgain_da
                                du_t += dx_b * gain
                                db_t[n] += dh_n * gain * ut
                                dc_t[n] += h_t[n] * dy
                                dh[n] = dh_n * decay_t[n]  # carried to h_{t-1}
                        else:
                            dlu = dl * ut
                            for n in range(width):
                                dh_n = dh[n] + c_t[n] * dy
                                g_decay = dh_n * prev[n] * decay_t[n]
                                dx_b = dh_n * b_t[n]
                                ddl += g_decay * a_row[n] + dx_b * ut
                                dA_acc[n] += g_decay * dl
                                du_t += dx_b * dl
                                db_t[n] += dh_n * dlu
                                dc_t[n] += h_t[n] * dy
                                dh[n] = dh_n * decay_t[n]
                        if has_d:
                            dD_acc += dy * ut
                        du[b, d, t] = du_t
                        ddelta[b, d, t] = ddl
                # Through softplus (its derivative is sigmoid, 1 above 20) and the bias.
                dbias_acc = np.float32(0.0)
                ddelta_row, delta_row = ddelta[b, d], delta[b, d]
                if softplus:
                    for t in range(length):
                        pre = delta_row[t] + bias_d
                        g = ddelta_row[t] if pre > np.float32(20.0) else ddelta_row[t] * _sigmoid(pre)
                        ddelta_row[t] = g
                        dbias_acc += g
                else:
                    for t in range(length):
                        dbias_acc += ddelta_row[t]
                dA_rows[b, d, :] = dA_acc
                dD_rows[b, d] = dD_acc
                dbias_rows[b, d] = dbias_acc

    return scan_bwd


# ---------------------------------------------------------------------- launchers (torch tensors in and out)
def _array(t, padded: int | None = None):
    """A C-contiguous fp32 numpy view of a CPU tensor (copied only when needed), its last dimension
    zero-padded to `padded` if given.

    Copies are numpy's (one thread), not torch's: a torch copy big enough to run in parallel leaves
    torch's OpenMP workers spinning on the cores that the kernel's threads are about to need."""
    import torch

    a = t.detach().to(torch.float32).numpy()
    if padded is not None and padded != a.shape[-1]:
        out = np.zeros(a.shape[:-1] + (padded,), np.float32)
        out[..., :a.shape[-1]] = a
        return out
    return np.ascontiguousarray(a)


def _optional(t, ndim: int):
    return np.empty((0,) * ndim, np.float32) if t is None else _array(t)


def _bc_layout(t, dim: int, padded: int):
    """B or C as (time-major array, N padded; batch flag; channels per group; time flag): see the module docstring."""
    if t.dim() == 2:
        return _array(t, padded)[None, :, None, :], 0, 1, 0
    if t.dim() == 3:
        t = t[:, None]
    return _array(t.transpose(2, 3), padded), 1, dim // t.shape[1], 1


def padded_dstate(dstate: int) -> int:
    return -(-dstate // LANES) * LANES


def n_chunks(length: int) -> int:
    return -(-length // CHUNK)


def selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       discretization="mamba", save_states=False):
    """Run the forward kernel on CPU tensors. Returns (out (batch, D, L) in u's dtype, last_state (batch, D, N)
    fp32, chunk_states (batch, D, n_chunks, padded N) fp32 when save_states, else an empty tensor)."""
    import torch

    batch, dim, length = u.shape
    dstate = A.shape[1]
    padded = padded_dstate(dstate)
    B_arr, b_batch, b_div, b_time = _bc_layout(B, dim, padded)
    C_arr, c_batch, c_div, c_time = _bc_layout(C, dim, padded)
    out = torch.empty(batch, dim, length, dtype=torch.float32)
    last = torch.empty(batch, dim, padded, dtype=torch.float32)
    states = torch.empty((batch, dim, n_chunks(length), padded) if save_states else (0, 0, 0, 0), dtype=torch.float32)
    use_torch_thread_count()
    scan_fwd_kernel(discretization == "zoh", padded)(
        _array(u), _array(delta), _array(A, padded), B_arr, C_arr, _optional(D, 1), _optional(z, 3),
        _optional(delta_bias, 1), out.numpy(), last.numpy(), states.numpy(), b_batch, b_div, b_time,
        c_batch, c_div, c_time, D is not None, z is not None, delta_bias is not None, bool(delta_softplus),
        bool(save_states))
    return out.to(u.dtype), last[..., :dstate], states


def _work_block(dim: int, batch: int, *group_sizes: int) -> int:
    """Channels per backward work item: a divisor of every B/C group size, small enough for ~4 items per thread."""
    import torch

    common = dim
    for size in group_sizes:
        common = math.gcd(common, size)
    target = max(1, batch * dim // (4 * torch.get_num_threads()))
    return max(k for k in range(1, common + 1) if common % k == 0 and k <= target)


def _bc_grad(part, t, batch: int, dim: int, block: int):
    """Sum a kernel's dB / dC partials (N padded) into t's shape and dtype."""
    part = part[..., :t.shape[-1] if t.dim() == 2 else t.shape[-2]]
    if t.dim() == 2:
        return part.sum(0)[:, 0].to(t.dtype)
    groups = 1 if t.dim() == 3 else t.shape[1]
    per_group = part.reshape(batch, groups, dim // block // groups, *part.shape[2:]).sum(2)  # (batch, G, L, N)
    return per_group.transpose(2, 3).reshape(t.shape).to(t.dtype)


def selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, chunk_states, delta_softplus=False,
                       discretization="mamba"):
    """Run the backward kernel. Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each in its input's dtype
    and shape; entries for absent optional inputs are None. dlast may be None; chunk_states come from
    selective_scan_fwd(..., save_states=True)."""
    import torch

    batch, dim, length = u.shape
    dstate = A.shape[1]
    padded = padded_dstate(dstate)
    B_arr, b_batch, b_div, b_time = _bc_layout(B, dim, padded)
    C_arr, c_batch, c_div, c_time = _bc_layout(C, dim, padded)
    block = _work_block(dim, batch, *([b_div] if b_time else []), *([c_div] if c_time else []))
    f32 = dict(dtype=torch.float32)
    du, ddelta = torch.empty(batch, dim, length, **f32), torch.empty(batch, dim, length, **f32)
    dz = torch.empty(batch, dim, length, **f32) if z is not None else torch.empty(0, 0, 0, **f32)
    dA = torch.empty(batch, dim, padded, **f32)
    dB = torch.zeros(batch, dim // block, length, padded, **f32) if b_time else torch.empty(batch, dim, 1, padded, **f32)
    dC = torch.zeros(batch, dim // block, length, padded, **f32) if c_time else torch.empty(batch, dim, 1, padded, **f32)
    dD, dbias = torch.empty(batch, dim, **f32), torch.empty(batch, dim, **f32)
    use_torch_thread_count()
    scan_bwd_kernel(discretization == "zoh", padded)(
        _array(u), _array(delta), _array(A, padded), B_arr, C_arr, _optional(D, 1), _optional(z, 3),
        _optional(delta_bias, 1), chunk_states.numpy(), _array(dout),
        _array(dlast, padded) if dlast is not None else np.empty((0, 0, 0), np.float32),
        du.numpy(), ddelta.numpy(), dz.numpy(), dA.numpy(), dB.numpy(), dC.numpy(), dD.numpy(), dbias.numpy(),
        b_batch, b_div, b_time, c_batch, c_div, c_time, block,
        D is not None, z is not None, delta_bias is not None, dlast is not None, bool(delta_softplus))
    return (du.to(u.dtype), ddelta.to(delta.dtype), dA.sum(0)[:, :dstate].to(A.dtype),
            _bc_grad(dB, B, batch, dim, block), _bc_grad(dC, C, batch, dim, block),
            None if D is None else dD.sum(0).to(D.dtype), None if z is None else dz.to(z.dtype),
            None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype))
