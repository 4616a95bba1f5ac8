"""Selective scan (Mamba S6) forward and backward for CPUs, compiled with numba.

One work item owns whole channels: the state h (N values) stays in registers / L1 while the loop
walks the sequence once, reading u, delta, B and C and writing y, so nothing of size (batch, D, L, N)
is ever materialised. The N-loop vectorises (16 fp32 lanes on AVX-512) because exp() is computed
inline as 2^k * p(f) instead of a scalar libm call.

The forward optionally saves the state entering every CHUNK steps; the backward walks each channel's
chunks in reverse, recomputes the chunk's states from the saved one, and runs the reverse recurrence
dh_{t-1} = a_t * dh_t + C_{t-1} * dy_{t-1} (the design of the Triton kernel in selective_scan.py).

Layouts (all C-contiguous fp32; fusionmamba_triton/ops/selective_scan.py prepares them):
    u, delta, z, out, du, ddelta, dz, dout: (batch, D, L)        A: (D, N)     D_skip, bias: (D,)
    B, C: (batch_b, G, L_b, N), time-major so the N-loop is contiguous; channel d of batch row b at
      time t reads B[b * b_batch, d // b_div, t * b_time]:
        constant (D, N)   -> (1, D, 1, N),  b_batch = 0, b_div = 1,       b_time = 0
        grouped / variable -> (batch, G, L, N), b_batch = 1, b_div = D // G, b_time = 1
    states: (batch, D, n_chunks, N), the state entering each chunk      last: (batch, D, N)
Absent optional inputs are passed as empty arrays with their flag False.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

# numba's own thread pool: its OpenMP layer would reset torch's thread count (they share libgomp's
# settings) and leave spinning threads competing with torch's pool for the cores.
if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "workqueue"

CHUNK = 64  # steps between saved states: the backward's recompute buffers (2 x CHUNK x N fp32) fit in L1
_FASTMATH = {"reassoc", "contract"}  # lets LLVM vectorise the sums over N and fuse multiply-adds

# exp(f) ~ 1 + f + ... + P6 f^6 on [-ln2/2, ln2/2]: a relative-error fit of our own (max error 2e-9 before
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


@numba.njit(inline="always", fastmath=_FASTMATH)
def _exp(x):
    """float32 exp accurate to ~2 ulp for x in [-87, 88]; inputs outside are clamped (exp(-87) = 1.6e-38)."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    k = np.float32(math.floor(x * np.float32(_LOG2E) + np.float32(0.5)))
    f = x - k * np.float32(_LN2_HI) - k * np.float32(_LN2_LO)
    p = np.float32(_P6)
    p = p * f + np.float32(_P5)
    p = p * f + np.float32(_P4)
    p = p * f + np.float32(_P3)
    p = p * f + np.float32(_P2)
    p = p * f + np.float32(1.0)
    p = p * f + np.float32(1.0)
    return p * _int32_bits_as_float32((np.int32(k) + np.int32(127)) << np.int32(23))


@numba.njit(inline="always")
def _delta(raw, bias, softplus):
    """(pre-activation, delta) for one step: raw + bias, then softplus (identity above 20) if asked."""
    pre = raw + bias
    if softplus and pre <= np.float32(20.0):
        return pre, np.float32(math.log1p(math.exp(pre)))
    return pre, pre


@numba.njit(inline="always")
def _zoh_gain(dl, a):
    """(exp(dl * a) - 1) / a, with its limit dl at a == 0."""
    if a == np.float32(0.0):
        return dl
    return np.float32(math.expm1(dl * a)) / a


@numba.njit(parallel=True, fastmath=_FASTMATH, cache=True)
def scan_fwd(u, delta, A, B, C, D_skip, z, bias, out, last, states,
             b_batch, b_div, b_time, c_batch, c_div, c_time,
             has_d, has_z, has_bias, softplus, zoh, save_states):
    batch, dim, length = u.shape
    dstate = A.shape[1]
    for row in numba.prange(batch * dim):
        b = row // dim
        d = row - b * dim
        a_row = A[d]
        bias_d = bias[d] if has_bias else np.float32(0.0)
        skip = D_skip[d] if has_d else np.float32(0.0)
        h = np.zeros(dstate, np.float32)
        for t in range(length):
            if save_states and t % CHUNK == 0:
                states[b, d, t // CHUNK, :] = h
            _, dl = _delta(delta[b, d, t], bias_d, softplus)
            ut = u[b, d, t]
            b_t = B[b * b_batch, d // b_div, t * b_time]
            c_t = C[c_batch * b, d // c_div, t * c_time]
            y = np.float32(0.0)
            if zoh:
                for n in range(dstate):
                    decay = _exp(dl * a_row[n])
                    h[n] = decay * h[n] + _zoh_gain(dl, a_row[n]) * b_t[n] * ut
                    y += c_t[n] * h[n]
            else:
                x = dl * ut
                for n in range(dstate):
                    h[n] = _exp(dl * a_row[n]) * h[n] + x * b_t[n]
                    y += c_t[n] * h[n]
            y += skip * ut
            if has_z:
                zt = z[b, d, t]
                y *= zt / (np.float32(1.0) + np.float32(math.exp(-zt)))
            out[b, d, t] = y
        last[b, d, :] = h


@numba.njit(parallel=True, fastmath=_FASTMATH, cache=True)
def scan_bwd(u, delta, A, B, C, D_skip, z, bias, states, dout, dlast,
             du, ddelta, dz, dA_rows, dB_part, dC_part, dD_rows, dbias_rows,
             b_batch, b_div, b_time, c_batch, c_div, c_time, block,
             has_d, has_z, has_bias, has_dlast, softplus, zoh):
    """Gradients. Work item (b, k) owns channels k*block .. (k+1)*block of batch row b (never straddling a
    B/C group). Per-row results: du, ddelta, dz, dA_rows / dD_rows / dbias_rows (batch, D, ...), summed by
    the caller. dB_part / dC_part: (batch, D, N) per row when B / C is constant (as (batch, D, 1, N)), else (batch, D // block, L, N)
    per work item, summed over each group's items by the caller."""
    batch, dim, length = u.shape
    dstate = A.shape[1]
    n_blocks = dim // block
    n_chunks = (length + CHUNK - 1) // CHUNK
    for item in numba.prange(batch * n_blocks):
        b = item // n_blocks
        k = item - b * n_blocks
        hs = np.empty((CHUNK, dstate), np.float32)  # states h_t of the chunk being walked
        decays = np.empty((CHUNK, dstate), np.float32)
        gains = np.empty((CHUNK, dstate), np.float32)
        pres = np.empty(CHUNK, np.float32)
        dls = np.empty(CHUNK, np.float32)
        dh = np.empty(dstate, np.float32)
        dA_acc = np.empty(dstate, np.float32)
        dB_acc = np.empty(dstate, np.float32)
        dC_acc = np.empty(dstate, np.float32)
        for d in range(k * block, (k + 1) * block):
            a_row = A[d]
            bias_d = bias[d] if has_bias else np.float32(0.0)
            skip = D_skip[d] if has_d else np.float32(0.0)
            dD_acc = np.float32(0.0)
            dbias_acc = np.float32(0.0)
            dA_acc[:] = 0.0
            dB_acc[:] = 0.0
            dC_acc[:] = 0.0
            if has_dlast:
                dh[:] = dlast[b, d]
            else:
                dh[:] = 0.0
            for c in range(n_chunks - 1, -1, -1):
                t0 = c * CHUNK
                steps = min(CHUNK, length - t0)
                h_entry = states[b, d, c]
                # Recompute the chunk's states from its saved entry state.
                for i in range(steps):
                    t = t0 + i
                    pres[i], dls[i] = _delta(delta[b, d, t], bias_d, softplus)
                    dl = dls[i]
                    ut = u[b, d, t]
                    b_t = B[b * b_batch, d // b_div, t * b_time]
                    for n in range(dstate):
                        decays[i, n] = _exp(dl * a_row[n])
                        gains[i, n] = _zoh_gain(dl, a_row[n]) if zoh else dl
                        prev = hs[i - 1, n] if i > 0 else h_entry[n]
                        hs[i, n] = decays[i, n] * prev + gains[i, n] * b_t[n] * ut
                # Walk it backwards.
                for i in range(steps - 1, -1, -1):
                    t = t0 + i
                    dl = dls[i]
                    ut = u[b, d, t]
                    b_t = B[b * b_batch, d // b_div, t * b_time]
                    c_t = C[c_batch * b, d // c_div, t * c_time]
                    dy = dout[b, d, t]
                    if has_z:
                        zt = z[b, d, t]
                        y = skip * ut
                        for n in range(dstate):
                            y += c_t[n] * hs[i, n]
                        sig = np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-zt)))
                        dz[b, d, t] = dy * y * sig * (np.float32(1.0) + zt * (np.float32(1.0) - sig))
                        dy = dy * zt * sig
                    ddl = np.float32(0.0)
                    du_t = skip * dy
                    for n in range(dstate):
                        hn = hs[i, n]
                        dh_n = dh[n] + c_t[n] * dy  # total gradient reaching h_t
                        prev = hs[i - 1, n] if i > 0 else h_entry[n]
                        g_decay = dh_n * prev * decays[i, n]  # d loss / d(dl * a) through the decay
                        ddl += g_decay * a_row[n]
                        dA_acc[n] += g_decay * dl
                        dx_b = dh_n * b_t[n]
                        if zoh:
                            ddl += dx_b * ut * decays[i, n]
                            if a_row[n] == np.float32(0.0):
                                dgain_da = np.float32(0.5) * dl * dl
                            else:
                                dgain_da = (dl * decays[i, n] - gains[i, n]) / a_row[n]
                            dA_acc[n] += dx_b * ut * dgain_da
                        else:
                            ddl += dx_b * ut
                        du_t += dx_b * gains[i, n]
                        g_b = dh_n * gains[i, n] * ut
                        g_c = hn * dy
                        if b_time == 0:
                            dB_acc[n] += g_b
                        else:
                            dB_part[b, d // block, t, n] += g_b
                        if c_time == 0:
                            dC_acc[n] += g_c
                        else:
                            dC_part[b, d // block, t, n] += g_c
                        dh[n] = dh_n * decays[i, n]  # carried to h_{t-1}
                    if has_d:
                        dD_acc += dy * ut
                    if softplus and pres[i] <= np.float32(20.0):
                        ddl *= np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-pres[i])))
                    dbias_acc += ddl
                    du[b, d, t] = du_t
                    ddelta[b, d, t] = ddl
            dA_rows[b, d, :] = dA_acc
            if b_time == 0:
                dB_part[b, d, 0, :] = dB_acc
            if c_time == 0:
                dC_part[b, d, 0, :] = dC_acc
            if has_d:
                dD_rows[b, d] = dD_acc
            if has_bias:
                dbias_rows[b, d] = dbias_acc


# ---------------------------------------------------------------------- launchers (torch tensors in and out)
def _threads() -> None:
    """Use as many numba threads as torch does, so one setting (torch.set_num_threads) rules both."""
    import torch

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _array(t):
    """A C-contiguous fp32 numpy view of a CPU tensor (copied only when needed)."""
    import torch

    return t.detach().to(torch.float32).contiguous().numpy()


def _optional(t, ndim: int):
    return np.empty((0,) * ndim, np.float32) if t is None else _array(t)


def _bc_layout(t, dim: int):
    """B or C as (time-major array, batch flag, channels per group, time flag); see the module docstring."""
    if t.dim() == 2:
        return _array(t)[None, :, None, :], 0, 1, 0
    if t.dim() == 3:
        t = t[:, None]
    return _array(t.transpose(2, 3)), 1, dim // t.shape[1], 1


def n_chunks(length: int) -> int:
    return -(-length // CHUNK)


def selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       discretization="mamba", save_states=False):
    """Run the forward kernel on CPU tensors. Returns (out (batch, D, L) in u's dtype, last_state (batch, D, N)
    fp32, chunk_states (batch, D, n_chunks, N) fp32 when save_states, else an empty tensor)."""
    import torch

    batch, dim, length = u.shape
    dstate = A.shape[1]
    B_arr, b_batch, b_div, b_time = _bc_layout(B, dim)
    C_arr, c_batch, c_div, c_time = _bc_layout(C, dim)
    out = torch.empty(batch, dim, length, dtype=torch.float32)
    last = torch.empty(batch, dim, dstate, dtype=torch.float32)
    states = torch.empty((batch, dim, n_chunks(length), dstate) if save_states else (0, 0, 0, 0), dtype=torch.float32)
    _threads()
    scan_fwd(_array(u), _array(delta), _array(A), B_arr, C_arr, _optional(D, 1), _optional(z, 3),
             _optional(delta_bias, 1), out.numpy(), last.numpy(), states.numpy(),
             b_batch, b_div, b_time, c_batch, c_div, c_time,
             D is not None, z is not None, delta_bias is not None, bool(delta_softplus), discretization == "zoh",
             bool(save_states))
    return out.to(u.dtype), last, states


def _work_block(dim: int, batch: int, *group_sizes: int) -> int:
    """Channels per backward work item: a divisor of every B/C group size, small enough for ~4 items per thread."""
    import torch

    common = dim
    for size in group_sizes:
        common = math.gcd(common, size)
    target = max(1, batch * dim // (4 * torch.get_num_threads()))
    return max(k for k in range(1, common + 1) if common % k == 0 and k <= target)


def _bc_grad(part, t, batch: int, dim: int, block: int):
    """Sum a kernel's dB / dC partials into t's shape and dtype."""
    if t.dim() == 2:
        return part.sum(0)[:, 0].to(t.dtype)
    groups = 1 if t.dim() == 3 else t.shape[1]
    per_group = part.view(batch, groups, dim // block // groups, *part.shape[2:]).sum(2)  # (batch, G, L, N)
    return per_group.transpose(2, 3).reshape(t.shape).to(t.dtype)


def selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, chunk_states, delta_softplus=False,
                       discretization="mamba"):
    """Run the backward kernel. Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each in its input's dtype
    and shape; entries for absent optional inputs are None. dlast may be None; chunk_states come from
    selective_scan_fwd(..., save_states=True)."""
    import torch

    batch, dim, length = u.shape
    dstate = A.shape[1]
    B_arr, b_batch, b_div, b_time = _bc_layout(B, dim)
    C_arr, c_batch, c_div, c_time = _bc_layout(C, dim)
    block = _work_block(dim, batch, *([b_div] if b_time else []), *([c_div] if c_time else []))
    f32 = dict(dtype=torch.float32)
    du, ddelta = torch.empty(batch, dim, length, **f32), torch.empty(batch, dim, length, **f32)
    dz = torch.empty(batch, dim, length, **f32) if z is not None else torch.empty(0, 0, 0, **f32)
    dA = torch.empty(batch, dim, dstate, **f32)
    dB = torch.zeros(batch, dim // block, length, dstate, **f32) if b_time else torch.empty(batch, dim, 1, dstate, **f32)
    dC = torch.zeros(batch, dim // block, length, dstate, **f32) if c_time else torch.empty(batch, dim, 1, dstate, **f32)
    dD, dbias = torch.empty(batch, dim, **f32), torch.empty(batch, dim, **f32)
    _threads()
    scan_bwd(_array(u), _array(delta), _array(A), B_arr, C_arr, _optional(D, 1), _optional(z, 3),
             _optional(delta_bias, 1), chunk_states.numpy(), _array(dout), _optional(dlast, 3),
             du.numpy(), ddelta.numpy(), dz.numpy(), dA.numpy(), dB.numpy(), dC.numpy(), dD.numpy(), dbias.numpy(),
             b_batch, b_div, b_time, c_batch, c_div, c_time, block,
             D is not None, z is not None, delta_bias is not None, dlast is not None, bool(delta_softplus),
             discretization == "zoh")
    return (du.to(u.dtype), ddelta.to(delta.dtype), dA.sum(0).to(A.dtype), _bc_grad(dB, B, batch, dim, block),
            _bc_grad(dC, C, batch, dim, block), None if D is None else dD.sum(0).to(D.dtype),
            None if z is None else dz.to(z.dtype), None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype))
