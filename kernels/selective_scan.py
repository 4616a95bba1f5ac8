"""Selective scan (Mamba S6) forward and backward Triton kernels and their launchers.

Contract (what the kernels compute; the reference is fusionmamba_triton.ops.selective_scan_ref):
    delta' = softplus(delta + delta_bias) (bias and softplus optional; softplus is the identity above 20)
    a_t = exp(delta'_t A)                 gain_t = delta'_t, or (exp(delta'_t A) - 1) / A for "zoh"
    h_t = a_t * h_{t-1} + gain_t * B_t * u_t    (h_{-1} = 0; per channel d and state n)
    y_t = sum_n h_t C_t + D u_t, times silu(z_t) when z is given
Shapes (contiguous; the launchers make inputs contiguous once and allocate every output and
gradient contiguous):
    u, delta, z, out: (batch, D, L)      A: (D, N) fp32     D_skip, delta_bias: (D,)
    B, C: (D, N) when constant, else (batch, G, N, L): variable B/C is G = 1; channel d uses group d // (D / G)
    chunk_states: (batch, ceil(L / STATE_CHUNK), D, N) fp32     last_state: (batch, D, N) fp32
Accumulation is fp32 whatever the input dtype; outputs and gradients come back in the inputs' dtypes.

Design. A program owns one batch row and BLOCK_D channels x BLOCK_N states and walks the sequence
CHUNK steps at a time. Its register tiles are (BLOCK_D, BLOCK_N, CHUNK) with time last, so that the
loads of u, delta, z, B, C and the stores of y run along contiguous memory; inside a chunk the
recurrence is a parallel (associative) scan over the time axis, seeded with the carried state.
Per-step states never reach memory. Training saves the state entering every STATE_CHUNK steps;
the backward walks those segments in reverse, recomputing each from its saved state, and carries
dh backwards. Its B/C gradients of variable/grouped layouts are per-program partial sums (summed
over the block's channels in registers when they share a group), reduced by one sum afterwards:
no atomics. Block sizes, chunk length and warps come from kernels/configs.py and are autotuned on CUDA.
The launchers do no autograd; fusionmamba_triton/ops/selective_scan.py does.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .configs import (
    MODEL_D_STATE,
    MODEL_SCAN_GROUPS,
    SCAN_BWD_CONFIGS,
    SCAN_BWD_TILE_DN,
    SCAN_FWD_INFER_CONFIGS,
    SCAN_FWD_TRAIN_CONFIGS,
    STATE_CHUNK,
    autotune_enabled,
    model_shapes,
    register_budget,
    scan_block_d,
    scan_block_n,
)


@triton.jit
def _combine(a_left, x_left, a_right, x_right):
    # (a_l, x_l) then (a_r, x_r): h -> a_r * (a_l * h + x_l) + x_r
    return a_left * a_right, a_right * x_left + x_right


@triton.jit
def _expm1(x):
    # Kahan's trick: accurate exp(x) - 1 near 0 without a libdevice call (runs in the interpreter too).
    e = tl.exp(x)
    em1 = e - 1.0
    log_e = tl.log(e)
    safe_log = tl.where(log_e == 0.0, 1.0, log_e)
    return tl.where(em1 == 0.0, x, tl.where(em1 == -1.0, -1.0, em1 * x / safe_log))


@triton.jit
def _softplus(x):
    # log1p(exp(x)) with Kahan's log1p, identity above 20 as torch.nn.functional.softplus.
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    wm1 = w - 1.0
    safe_wm1 = tl.where(wm1 == 0.0, 1.0, wm1)
    log1p = tl.where(wm1 == 0.0, e, tl.log(w) * e / safe_wm1)
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _load_delta(delta_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(pre-activation, delta) as (BLOCK_D, CHUNK) fp32 tiles; delta is 0 where masked, so exp(delta * A) = 1."""
    pre = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        pre = pre + bias[:, None]
    dl = pre
    if SOFTPLUS:
        dl = _softplus(pre)
    return pre, tl.where(mask, dl, 0.0)


@triton.jit
def _load_bc(ptr, pid_b, d, n, t, dim, dstate, length, groups, d_mask, n_mask, t_mask, CONST: tl.constexpr):
    """B or C as (BLOCK_D, BLOCK_N, 1) when constant, else (BLOCK_D, BLOCK_N, CHUNK), fp32, 0 where masked."""
    if CONST:
        offs = d.to(tl.int64)[:, None, None] * dstate + n[None, :, None]
        mask = d_mask[:, None, None] & n_mask[None, :, None]
    else:
        g = (d // (dim // groups)).to(tl.int64)
        row = (pid_b * groups + g) * dstate
        offs = (row[:, None, None] + n[None, :, None]) * length + t[None, None, :]
        mask = d_mask[:, None, None] & n_mask[None, :, None] & t_mask[None, None, :]
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _discretize(dl, A3, ZOH: tl.constexpr):
    """(decay a, gain) for the delta tile dl (BLOCK_D, CHUNK) and A3 (BLOCK_D, BLOCK_N, 1)."""
    dl3 = dl[:, None, :]
    dA = dl3 * A3
    a = tl.exp(dA)
    if ZOH:
        safe_A = tl.where(A3 == 0.0, 1.0, A3)
        gain = tl.where(A3 == 0.0, dl3, _expm1(dA) / safe_A)
    else:
        gain = dl3 + tl.zeros_like(dA)
    return a, gain


@triton.jit
def _last_step(tile, t_loc, CHUNK: tl.constexpr):
    """tile[:, :, CHUNK - 1] of a (BLOCK_D, BLOCK_N, CHUNK) tile."""
    return tl.sum(tl.where(t_loc[None, None, :] == CHUNK - 1, tile, 0.0), axis=2)


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, states_ptr, last_ptr,
    dim, length, dstate, groups_b, groups_c,
    B_CONST: tl.constexpr, C_CONST: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ZOH: tl.constexpr,
    STORE_STATES: tl.constexpr, STATE_CHUNK: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    """out, last_state and (STORE_STATES) the state entering every STATE_CHUNK steps (CHUNK divides it)."""
    if STORE_STATES:
        tl.static_assert(STATE_CHUNK % CHUNK == 0)
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    t_loc = tl.arange(0, CHUNK)
    d_mask = d < dim
    n_mask = n < dstate
    dn_mask = d_mask[:, None] & n_mask[None, :]
    dn_offs = d.to(tl.int64)[:, None] * dstate + n[None, :]
    A3 = tl.load(A_ptr + dn_offs, mask=dn_mask, other=0.0).to(tl.float32)[:, :, None]
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_D:
        d_skip = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    row = (pid_b * dim + d.to(tl.int64)) * length
    n_segments = tl.cdiv(length, STATE_CHUNK)
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for c in range(0, tl.cdiv(length, CHUNK)):
        t = c * CHUNK + t_loc
        t_mask = t < length
        mask = d_mask[:, None] & t_mask[None, :]
        offs = row[:, None] + t[None, :]
        if STORE_STATES:  # the state entering each STATE_CHUNK-step segment
            segment = c // (STATE_CHUNK // CHUNK)
            first = c % (STATE_CHUNK // CHUNK) == 0
            state_offs = ((pid_b * n_segments + segment) * dim + d.to(tl.int64))[:, None] * dstate + n[None, :]
            tl.store(states_ptr + state_offs, h, mask=dn_mask & first)
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        pre, dl = _load_delta(delta_ptr, offs, mask, bias, HAS_BIAS, SOFTPLUS)
        a, gain = _discretize(dl, A3, ZOH)
        Bv = _load_bc(B_ptr, pid_b, d, n, t, dim, dstate, length, groups_b, d_mask, n_mask, t_mask, B_CONST)
        x = gain * Bv * u[:, None, :]
        decay, hs = tl.associative_scan((a, x), axis=2, combine_fn=_combine)
        hs = hs + decay * h[:, :, None]
        Cv = _load_bc(C_ptr, pid_b, d, n, t, dim, dstate, length, groups_c, d_mask, n_mask, t_mask, C_CONST)
        y = tl.sum(hs * Cv, axis=1)
        if HAS_D:
            y += d_skip[:, None] * u
        if HAS_Z:
            zv = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            y *= zv * tl.sigmoid(zv)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
        # Masked steps have a = 1 and x = 0, so the last step's state is the one after the last real step.
        h = _last_step(hs, t_loc, CHUNK)
    tl.store(last_ptr + (pid_b * dim + d.to(tl.int64))[:, None] * dstate + n[None, :], h, mask=dn_mask)


@triton.jit
def _bc_grad_store(ptr, part, pid_b, pid_d, d, n, t, dim, dstate, length, d_mask, n_mask, t_mask,
                   ONE_GROUP: tl.constexpr, BLOCK_D: tl.constexpr):
    """Write a (BLOCK_D, BLOCK_N, CHUNK) B/C gradient to its fp32 partial buffer (batch, R, N, L):
    summed over the block's channels into row pid_d when they share one group (R = blocks), else one
    row per channel (R = D)."""
    nt_mask = n_mask[:, None] & t_mask[None, :]
    if ONE_GROUP:
        rows = tl.cdiv(dim, BLOCK_D)
        offs = ((pid_b * rows + pid_d) * dstate + n[:, None]) * length + t[None, :]
        tl.store(ptr + offs, tl.sum(part, axis=0), mask=nt_mask)
    else:
        offs = (((pid_b * dim + d.to(tl.int64)) * dstate)[:, None, None] + n[None, :, None]) * length
        tl.store(ptr + offs + t[None, None, :], part, mask=d_mask[:, None, None] & nt_mask[None, :, :])


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, dout_ptr, dlast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, length, dstate, groups_b, groups_c,
    B_CONST: tl.constexpr, C_CONST: tl.constexpr, B_ONE_GROUP: tl.constexpr, C_ONE_GROUP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DLAST: tl.constexpr,
    SOFTPLUS: tl.constexpr, ZOH: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    """Gradients, walking the saved CHUNK-step segments in reverse. dA, dD, dbias and constant dB/dC
    are written per batch row (summed by the launcher); variable/grouped dB/dC as partial sums."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    t_loc = tl.arange(0, CHUNK)
    d_mask = d < dim
    n_mask = n < dstate
    dn_mask = d_mask[:, None] & n_mask[None, :]
    dn_offs = d.to(tl.int64)[:, None] * dstate + n[None, :]
    A3 = tl.load(A_ptr + dn_offs, mask=dn_mask, other=0.0).to(tl.float32)[:, :, None]
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_D:
        d_skip = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    row = (pid_b * dim + d.to(tl.int64)) * length
    batch_dn_offs = (pid_b * dim + d.to(tl.int64))[:, None] * dstate + n[None, :]
    n_chunks = tl.cdiv(length, CHUNK)
    # dh carried backwards: the gradient reaching the first step of the chunk after this one.
    dh = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    if HAS_DLAST:
        dh = tl.load(dlast_ptr + batch_dn_offs, mask=dn_mask, other=0.0).to(tl.float32)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dB_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dC_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        t = c * CHUNK + t_loc
        t_mask = t < length
        mask = d_mask[:, None] & t_mask[None, :]
        offs = row[:, None] + t[None, :]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        pre, dl = _load_delta(delta_ptr, offs, mask, bias, HAS_BIAS, SOFTPLUS)
        a, gain = _discretize(dl, A3, ZOH)
        Bv = _load_bc(B_ptr, pid_b, d, n, t, dim, dstate, length, groups_b, d_mask, n_mask, t_mask, B_CONST)
        x = gain * Bv * u[:, None, :]
        h0 = tl.load(states_ptr + ((pid_b * n_chunks + c) * dim + d.to(tl.int64))[:, None] * dstate + n[None, :],
                     mask=dn_mask, other=0.0)
        decay, hs = tl.associative_scan((a, x), axis=2, combine_fn=_combine)
        hs = hs + decay * h0[:, :, None]
        Cv = _load_bc(C_ptr, pid_b, d, n, t, dim, dstate, length, groups_c, d_mask, n_mask, t_mask, C_CONST)
        dy = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_Z:
            zv = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            y = tl.sum(hs * Cv, axis=1)
            if HAS_D:
                y += d_skip[:, None] * u
            sig = tl.sigmoid(zv)
            dz = dy * y * sig * (1.0 + zv * (1.0 - sig))
            tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
            dy = dy * zv * sig
        # Reverse recurrence dh_t = a_{t+1} dh_{t+1} + C_t dy_t needs the next step's decay.
        t_next = t + 1
        next_mask = d_mask[:, None] & (t_next < length)[None, :]
        _, dl_next = _load_delta(delta_ptr, row[:, None] + t_next[None, :], next_mask, bias, HAS_BIAS, SOFTPLUS)
        a_next = tl.exp(dl_next[:, None, :] * A3)
        w = Cv * dy[:, None, :]
        decay_r, dhs = tl.associative_scan((a_next, w), axis=2, combine_fn=_combine, reverse=True)
        dhs = dhs + decay_r * dh[:, :, None]
        dh = tl.sum(tl.where(t_loc[None, None, :] == 0, dhs, 0.0), axis=2)
        # d/d(delta*A) of a_t h_{t-1}, using a_t h_{t-1} = h_t - x_t.
        d_dA = dhs * (hs - x)
        dA_acc += tl.sum(d_dA * dl[:, None, :], axis=2)
        ddl = tl.sum(d_dA * A3, axis=1)
        dx_B = dhs * Bv
        if ZOH:
            ddl += tl.sum(dx_B * a, axis=1) * u
            safe_A = tl.where(A3 == 0.0, 1.0, A3)
            dl3 = dl[:, None, :]
            dgain_dA = tl.where(A3 == 0.0, 0.5 * dl3 * dl3, (dl3 * a - gain) / safe_A)
            dA_acc += tl.sum(dx_B * u[:, None, :] * dgain_dA, axis=2)
            du = tl.sum(dx_B * gain, axis=1)
        else:
            sum_dx_B = tl.sum(dx_B, axis=1)
            ddl += sum_dx_B * u
            du = sum_dx_B * dl
        if HAS_D:
            du += d_skip[:, None] * dy
            dD_acc += tl.sum(dy * u, axis=1)
        if SOFTPLUS:
            ddl = tl.where(pre > 20.0, ddl, ddl * tl.sigmoid(pre))
        ddl = tl.where(mask, ddl, 0.0)
        dbias_acc += tl.sum(ddl, axis=1)
        tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(ddelta_ptr + offs, ddl.to(ddelta_ptr.dtype.element_ty), mask=mask)
        dB_part = dhs * gain * u[:, None, :]
        if B_CONST:
            dB_acc += tl.sum(dB_part, axis=2)
        else:
            _bc_grad_store(dB_ptr, dB_part, pid_b, pid_d, d, n, t, dim, dstate, length, d_mask, n_mask, t_mask,
                           B_ONE_GROUP, BLOCK_D)
        dC_part = hs * dy[:, None, :]
        if C_CONST:
            dC_acc += tl.sum(dC_part, axis=2)
        else:
            _bc_grad_store(dC_ptr, dC_part, pid_b, pid_d, d, n, t, dim, dstate, length, d_mask, n_mask, t_mask,
                           C_ONE_GROUP, BLOCK_D)
    tl.store(dA_ptr + batch_dn_offs, dA_acc, mask=dn_mask)
    if B_CONST:
        tl.store(dB_ptr + batch_dn_offs, dB_acc, mask=dn_mask)
    if C_CONST:
        tl.store(dC_ptr + batch_dn_offs, dC_acc, mask=dn_mask)
    if HAS_D:
        tl.store(dD_ptr + pid_b * dim + d, dD_acc, mask=d_mask)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * dim + d, dbias_acc, mask=d_mask)


# ------------------------------------------------------------------------------------------ launchers
def _triton_configs(configs, dstate: int) -> list:
    return [triton.Config({"BLOCK_D": scan_block_d(c["TILE_DN"], dstate), "CHUNK": c["CHUNK"]},
                          num_warps=c["num_warps"], maxnreg=register_budget(c["num_warps"])) for c in configs]


# Each launch kind: its kernel and the config list it is tuned over (the first is the default).
_KINDS = {"infer": (_selective_scan_fwd_kernel, SCAN_FWD_INFER_CONFIGS),
          "train": (_selective_scan_fwd_kernel, SCAN_FWD_TRAIN_CONFIGS),
          "bwd": (_selective_scan_bwd_kernel, SCAN_BWD_CONFIGS)}


@functools.lru_cache(maxsize=None)
def _tuned(kind: str, dstate: int):
    """The triton.autotune wrapper of one kernel over its config list (one per kind and block_n)."""
    kernel, configs = _KINDS[kind]
    return triton.autotune(configs=_triton_configs(configs, dstate), key=["dim", "length"])(kernel)


def _launch(kind: str, grid_fn, args: tuple, flags: dict, dstate: int, config: dict | None) -> None:
    """Run the kind's kernel with `config` (a dict from kernels/configs.py), the autotuner, or the default config."""
    kernel, configs = _KINDS[kind]
    if config is None and autotune_enabled():
        _tuned(kind, dstate)[lambda meta: grid_fn(meta["BLOCK_D"])](*args, **flags)
        return
    config = config or configs[0]
    if kind == "bwd" and config["CHUNK"] != STATE_CHUNK:
        raise ValueError(f"backward configs walk the saved segments: CHUNK must be {STATE_CHUNK}, got {config}")
    block_d = scan_block_d(config["TILE_DN"], dstate)
    kernel[grid_fn(block_d)](*args, **flags, BLOCK_D=block_d, CHUNK=config["CHUNK"], num_warps=config["num_warps"],
                             maxnreg=register_budget(config["num_warps"]))


def _bc_layout(t: torch.Tensor) -> tuple[torch.Tensor, bool, int]:
    """(contiguous tensor, is_constant, groups) with variable (batch, N, L) seen as (batch, 1, N, L)."""
    if t.dim() == 2:
        return t.contiguous(), True, 1
    if t.dim() == 3:
        return t.unsqueeze(1).contiguous(), False, 1
    return t.contiguous(), False, t.shape[1]


def _optional(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _one_group(groups: int, dim: int, block_d: int) -> bool:
    """True when every block of block_d channels lies inside one group of B/C."""
    return groups == 1 or (dim // groups) % block_d == 0


def n_state_chunks(length: int) -> int:
    return triton.cdiv(length, STATE_CHUNK)


def selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       discretization="mamba", save_states=True, config=None):
    """Run the forward kernel. Returns (out (batch, D, L) in u's dtype, last_state (batch, D, N) fp32,
    chunk_states (batch, ceil(L / STATE_CHUNK), D, N) fp32 for the backward, or an empty tensor
    when save_states is False). `config`: one entry of kernels/configs.py's scan lists (default: tuned)."""
    batch, dim, length = u.shape
    dstate = A.shape[1]
    u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous()
    Bk, b_const, groups_b = _bc_layout(B)
    Ck, c_const, groups_c = _bc_layout(C)
    f32 = dict(device=u.device, dtype=torch.float32)
    out = torch.empty(u.shape, device=u.device, dtype=u.dtype)
    states = torch.empty(batch, n_state_chunks(length), dim, dstate, **f32) if save_states else torch.empty(0, **f32)
    last = torch.empty(batch, dim, dstate, **f32)
    args = (u, delta, A, Bk, Ck, _optional(D), _optional(z), _optional(delta_bias), out, states, last,
            dim, length, dstate, groups_b, groups_c)
    flags = dict(B_CONST=b_const, C_CONST=c_const, HAS_D=D is not None, HAS_Z=z is not None,
                 HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), ZOH=discretization == "zoh",
                 STORE_STATES=bool(save_states), STATE_CHUNK=STATE_CHUNK, BLOCK_N=scan_block_n(dstate))
    _launch("train" if save_states else "infer",
            lambda block_d: (batch, triton.cdiv(dim, block_d)), args, flags, dstate, config)
    return out, last, states


def selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, chunk_states, delta_softplus=False,
                       discretization="mamba", config=None):
    """Run the backward kernel. Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each in its input's
    dtype and shape (contiguous); entries for absent optional inputs are None. dlast may be None."""
    batch, dim, length = u.shape
    dstate = A.shape[1]
    u, delta, A, dout = u.contiguous(), delta.contiguous(), A.contiguous(), dout.contiguous()
    Bk, b_const, groups_b = _bc_layout(B)
    Ck, c_const, groups_c = _bc_layout(C)
    block_d = scan_block_d(SCAN_BWD_TILE_DN, dstate)  # the same for every backward config
    n_blocks = triton.cdiv(dim, block_d)
    f32 = dict(device=u.device, dtype=torch.float32)

    def bc_grad_buffer(const, groups):
        if const:
            return torch.empty(batch, dim, dstate, **f32), False
        one_group = _one_group(groups, dim, block_d)
        return torch.empty(batch, n_blocks if one_group else dim, dstate, length, **f32), one_group

    du = torch.empty(u.shape, device=u.device, dtype=u.dtype)
    ddelta = torch.empty(delta.shape, device=u.device, dtype=delta.dtype)
    dz = None if z is None else torch.empty(z.shape, device=u.device, dtype=z.dtype)
    dA = torch.empty(batch, dim, dstate, **f32)
    dB, b_one_group = bc_grad_buffer(b_const, groups_b)
    dC, c_one_group = bc_grad_buffer(c_const, groups_c)
    dD = torch.empty(batch, dim, **f32) if D is not None else None
    dbias = torch.empty(batch, dim, **f32) if delta_bias is not None else None
    args = (u, delta, A, Bk, Ck, _optional(D), _optional(z), _optional(delta_bias), chunk_states, dout,
            _optional(dlast), du, ddelta, dz, dA, dB, dC, dD, dbias, dim, length, dstate, groups_b, groups_c)
    flags = dict(B_CONST=b_const, C_CONST=c_const, B_ONE_GROUP=b_one_group, C_ONE_GROUP=c_one_group,
                 HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 HAS_DLAST=dlast is not None, SOFTPLUS=bool(delta_softplus), ZOH=discretization == "zoh",
                 BLOCK_N=scan_block_n(dstate))
    _launch("bwd", lambda bd: (batch, triton.cdiv(dim, bd)), args, flags, dstate, config)

    def reduce_bc(grad, const, groups, shape):
        if const:
            return grad.sum(0)
        return grad.view(batch, groups, -1, dstate, length).sum(2).view(shape)

    dB = reduce_bc(dB, b_const, groups_b, B.shape)
    dC = reduce_bc(dC, c_const, groups_c, C.shape)
    return (du, ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            None if D is None else dD.sum(0).to(D.dtype), dz,
            None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype))


# ------------------------------------------------------------------------------------------ AOT specs
_TRITON_DTYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}
# FusionMamba's scans: grouped B/C, D skip, delta bias, softplus, no z.
_MODEL_FLAGS = {"B_CONST": False, "C_CONST": False, "HAS_D": True, "HAS_Z": False, "HAS_BIAS": True,
                "SOFTPLUS": True, "ZOH": False}
_ALL_FLAGS = {"B_CONST": False, "C_CONST": True, "HAS_D": True, "HAS_Z": True, "HAS_BIAS": True,
              "SOFTPLUS": True, "ZOH": True}


def _spec(fn, act_ptr: str, constexprs: dict, config: dict, label: str) -> dict:
    act = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddelta_ptr", "dz_ptr"}
    ints = {"dim", "length", "dstate", "groups_b", "groups_c"}
    constexprs = dict(constexprs, BLOCK_N=scan_block_n(MODEL_D_STATE),
                      BLOCK_D=scan_block_d(config["TILE_DN"], MODEL_D_STATE), CHUNK=config["CHUNK"])
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ints:
            signature[name] = "i32"
        else:
            signature[name] = act_ptr if name in act else "*fp32"
    return {"fn": fn, "signature": signature, "constexprs": constexprs, "num_warps": config["num_warps"],
            "maxnreg": register_budget(config["num_warps"]), "label": label}


def _config_label(config: dict) -> str:
    return f"t{config['TILE_DN']}c{config['CHUNK']}w{config['num_warps']}"


def aot_specs() -> list[dict]:  # noqa: C901
    """Compile specs (kernels/aot.compile_kernel): every config of every tuning list in fp32 (the dtype the
    model's scan runs in), with the model's flags and with every optional branch on; the default configs
    in fp16/bf16."""
    block_d = scan_block_d(SCAN_BWD_TILE_DN, MODEL_D_STATE)
    one_group = {_one_group(MODEL_SCAN_GROUPS, s["D"], block_d) for s in model_shapes()}
    assert one_group == {True}, "model channel counts must fill whole blocks for the reduced dB/dC path"
    fwd, bwd = _selective_scan_fwd_kernel, _selective_scan_bwd_kernel
    flag_sets = {
        "model": (_MODEL_FLAGS, dict(B_ONE_GROUP=True, C_ONE_GROUP=True, HAS_DLAST=False)),  # the model drops last_state
        "all_options": (_ALL_FLAGS, dict(B_ONE_GROUP=False, C_ONE_GROUP=True, HAS_DLAST=True)),
    }
    specs = []
    for name, (flags, bwd_flags) in flag_sets.items():
        for config in SCAN_FWD_INFER_CONFIGS:
            specs.append(_spec(fwd, "*fp32", dict(flags, STORE_STATES=False, STATE_CHUNK=STATE_CHUNK), config,
                               f"fwd_infer_{name}_fp32_{_config_label(config)}"))
        for config in SCAN_FWD_TRAIN_CONFIGS:
            specs.append(_spec(fwd, "*fp32", dict(flags, STORE_STATES=True, STATE_CHUNK=STATE_CHUNK), config,
                               f"fwd_train_{name}_fp32_{_config_label(config)}"))
        for config in SCAN_BWD_CONFIGS:
            specs.append(_spec(bwd, "*fp32", dict(flags, **bwd_flags), config, f"bwd_{name}_fp32_{_config_label(config)}"))
    model, model_bwd = flag_sets["model"]
    for dtype in ("fp16", "bf16"):
        ptr = _TRITON_DTYPES[dtype]
        specs.append(_spec(fwd, ptr, dict(model, STORE_STATES=False, STATE_CHUNK=STATE_CHUNK),
                           SCAN_FWD_INFER_CONFIGS[0], f"fwd_infer_model_{dtype}_default"))
        specs.append(_spec(fwd, ptr, dict(model, STORE_STATES=True, STATE_CHUNK=STATE_CHUNK),
                           SCAN_FWD_TRAIN_CONFIGS[0], f"fwd_train_model_{dtype}_default"))
        specs.append(_spec(bwd, ptr, dict(model, **model_bwd), SCAN_BWD_CONFIGS[0], f"bwd_model_{dtype}_default"))
    return specs
