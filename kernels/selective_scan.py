"""Selective scan (Mamba S6) forward and backward Triton kernels and their launchers.

One program owns one batch row and BLOCK_D channels x BLOCK_N states. It walks the sequence in
chunks of CHUNK steps; inside a chunk the recurrence h_t = a_t * h_{t-1} + x_t is a parallel
(associative) scan over a (BLOCK_D, CHUNK, BLOCK_N) register tile, seeded with the state carried
from the previous chunk. Per-step states never reach memory: the forward saves only the state
entering each chunk, and the backward walks the chunks in reverse, recomputing each chunk's states
from its saved entry state.

Shapes (all contiguous; the ops module normalises layouts before calling):
    u, delta, z, out: (batch, D, L)      A: (D, N)        D_skip, delta_bias: (D,)
    B, C: (D, N) when constant, else (batch, G, N, L) (variable B/C is G = 1)
    chunk_states: (batch, n_chunks, D, N) fp32     last_state: (batch, D, N) fp32
The launchers do no autograd; see fusionmamba_triton/ops/selective_scan.py for that.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 16


def scan_config(dstate: int) -> dict:
    """Block sizes and warps both launchers use (and the AOT specs compile) for N = dstate."""
    block_n = max(2, triton.next_power_of_2(dstate))
    # BLOCK_D x BLOCK_N = 32 (tiles of 32 x CHUNK fp32 values) keeps every kernel spill-free on sm_80/sm_90
    # (python -m fusionmamba_triton.kernels.report).
    block_d = max(1, 32 // block_n)
    return {"BLOCK_D": block_d, "BLOCK_N": block_n, "CHUNK": CHUNK, "num_warps": 4}


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
    """(pre-activation, delta) as fp32 tiles; delta is 0 where masked so that exp(delta * A) = 1."""
    pre = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        pre = pre + bias[:, None]
    dl = pre
    if SOFTPLUS:
        dl = _softplus(pre)
    return pre, tl.where(mask, dl, 0.0)


@triton.jit
def _load_bc(ptr, pid_b, d, n, t, dim, dstate, length, groups, d_mask, n_mask, t_mask, CONST: tl.constexpr):
    """B or C as (BLOCK_D, 1, BLOCK_N) when constant, else (BLOCK_D, CHUNK, BLOCK_N), fp32, 0 where masked."""
    if CONST:
        offs = d.to(tl.int64)[:, None, None] * dstate + n[None, None, :]
        mask = d_mask[:, None, None] & n_mask[None, None, :]
    else:
        g = (d // (dim // groups)).to(tl.int64)
        row = (pid_b * groups + g) * dstate
        offs = (row[:, None, None] + n[None, None, :]) * length + t[None, :, None]
        mask = d_mask[:, None, None] & n_mask[None, None, :] & t_mask[None, :, None]
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _discretize(dl, A3, ZOH: tl.constexpr):
    """(decay a, gain) for delta tile dl (BLOCK_D, CHUNK) and A3 (BLOCK_D, 1, BLOCK_N)."""
    dl3 = dl[:, :, None]
    dA = dl3 * A3
    a = tl.exp(dA)
    if ZOH:
        safe_A = tl.where(A3 == 0.0, 1.0, A3)
        gain = tl.where(A3 == 0.0, dl3, _expm1(dA) / safe_A)
    else:
        gain = dl3 + tl.zeros_like(dA)
    return a, gain


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, states_ptr, last_ptr,
    dim, length, dstate, groups_b, groups_c,
    B_CONST: tl.constexpr, C_CONST: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ZOH: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    t_loc = tl.arange(0, CHUNK)
    d_mask = d < dim
    n_mask = n < dstate
    dn_mask = d_mask[:, None] & n_mask[None, :]
    dn_offs = d.to(tl.int64)[:, None] * dstate + n[None, :]
    A3 = tl.load(A_ptr + dn_offs, mask=dn_mask, other=0.0).to(tl.float32)[:, None, :]
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_D:
        d_skip = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    row = (pid_b * dim + d.to(tl.int64)) * length
    n_chunks = tl.cdiv(length, CHUNK)
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for c in range(0, n_chunks):
        t = c * CHUNK + t_loc
        t_mask = t < length
        mask = d_mask[:, None] & t_mask[None, :]
        offs = row[:, None] + t[None, :]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        pre, dl = _load_delta(delta_ptr, offs, mask, bias, HAS_BIAS, SOFTPLUS)
        a, gain = _discretize(dl, A3, ZOH)
        Bv = _load_bc(B_ptr, pid_b, d, n, t, dim, dstate, length, groups_b, d_mask, n_mask, t_mask, B_CONST)
        x = gain * Bv * u[:, :, None]
        decay, hs = tl.associative_scan((a, x), axis=1, combine_fn=_combine)
        hs = hs + decay * h[:, None, :]
        state_offs = ((pid_b * n_chunks + c) * dim + d.to(tl.int64))[:, None] * dstate + n[None, :]
        tl.store(states_ptr + state_offs, h, mask=dn_mask)
        Cv = _load_bc(C_ptr, pid_b, d, n, t, dim, dstate, length, groups_c, d_mask, n_mask, t_mask, C_CONST)
        y = tl.sum(hs * Cv, axis=2)
        if HAS_D:
            y += d_skip[:, None] * u
        if HAS_Z:
            zv = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            y *= zv * tl.sigmoid(zv)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
        # Masked steps have a = 1 and x = 0, so the last row is the state after the chunk's last real step.
        h = tl.sum(tl.where(t_loc[None, :, None] == CHUNK - 1, hs, 0.0), axis=1)
    tl.store(last_ptr + (pid_b * dim + d.to(tl.int64))[:, None] * dstate + n[None, :], h, mask=dn_mask)


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
    """Gradients. dA, dD, dbias and constant dB/dC are written per batch row (summed by the launcher);
    dB/dC of variable/grouped layouts are atomically added into zeroed fp32 buffers."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    t_loc = tl.arange(0, CHUNK)
    d_mask = d < dim
    n_mask = n < dstate
    dn_mask = d_mask[:, None] & n_mask[None, :]
    dn_offs = d.to(tl.int64)[:, None] * dstate + n[None, :]
    A3 = tl.load(A_ptr + dn_offs, mask=dn_mask, other=0.0).to(tl.float32)[:, None, :]
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
        Cv = _load_bc(C_ptr, pid_b, d, n, t, dim, dstate, length, groups_c, d_mask, n_mask, t_mask, C_CONST)
        x = gain * Bv * u[:, :, None]
        h0 = tl.load(states_ptr + ((pid_b * n_chunks + c) * dim + d.to(tl.int64))[:, None] * dstate + n[None, :],
                     mask=dn_mask, other=0.0)
        decay, hs = tl.associative_scan((a, x), axis=1, combine_fn=_combine)
        hs = hs + decay * h0[:, None, :]
        dy = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_Z:
            zv = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            y = tl.sum(hs * Cv, axis=2)
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
        a_next = tl.exp(dl_next[:, :, None] * A3)
        w = Cv * dy[:, :, None]
        decay_r, dhs = tl.associative_scan((a_next, w), axis=1, combine_fn=_combine, reverse=True)
        dhs = dhs + decay_r * dh[:, None, :]
        dh = tl.sum(tl.where(t_loc[None, :, None] == 0, dhs, 0.0), axis=1)
        # d/d(delta*A) of a_t h_{t-1}, using a_t h_{t-1} = h_t - x_t.
        d_dA = dhs * (hs - x)
        dA_acc += tl.sum(d_dA * dl[:, :, None], axis=1)
        ddl = tl.sum(d_dA * A3, axis=2)
        dx_B = dhs * Bv
        if ZOH:
            ddl += tl.sum(dx_B * a, axis=2) * u
            safe_A = tl.where(A3 == 0.0, 1.0, A3)
            dl3 = dl[:, :, None]
            dgain_dA = tl.where(A3 == 0.0, 0.5 * dl3 * dl3, (dl3 * a - gain) / safe_A)
            dA_acc += tl.sum(dx_B * u[:, :, None] * dgain_dA, axis=1)
            du = tl.sum(dx_B * gain, axis=2)
        else:
            sum_dx_B = tl.sum(dx_B, axis=2)
            ddl += sum_dx_B * u
            du = sum_dx_B * dl
        dB_part = dhs * gain * u[:, :, None]
        dC_part = hs * dy[:, :, None]
        if HAS_D:
            du += d_skip[:, None] * dy
            dD_acc += tl.sum(dy * u, axis=1)
        if SOFTPLUS:
            ddl = tl.where(pre > 20.0, ddl, ddl * tl.sigmoid(pre))
        ddl = tl.where(mask, ddl, 0.0)
        dbias_acc += tl.sum(ddl, axis=1)
        tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(ddelta_ptr + offs, ddl.to(ddelta_ptr.dtype.element_ty), mask=mask)
        if B_CONST:
            dB_acc += tl.sum(dB_part, axis=1)
        else:
            _add_bc_grad(dB_ptr, dB_part, pid_b, pid_d, d, n, t, dim, dstate, length, groups_b,
                         d_mask, n_mask, t_mask, B_ONE_GROUP, BLOCK_D)
        if C_CONST:
            dC_acc += tl.sum(dC_part, axis=1)
        else:
            _add_bc_grad(dC_ptr, dC_part, pid_b, pid_d, d, n, t, dim, dstate, length, groups_c,
                         d_mask, n_mask, t_mask, C_ONE_GROUP, BLOCK_D)
    tl.store(dA_ptr + batch_dn_offs, dA_acc, mask=dn_mask)
    if B_CONST:
        tl.store(dB_ptr + batch_dn_offs, dB_acc, mask=dn_mask)
    if C_CONST:
        tl.store(dC_ptr + batch_dn_offs, dC_acc, mask=dn_mask)
    if HAS_D:
        tl.store(dD_ptr + pid_b * dim + d, dD_acc, mask=d_mask)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * dim + d, dbias_acc, mask=d_mask)


@triton.jit
def _add_bc_grad(ptr, part, pid_b, pid_d, d, n, t, dim, dstate, length, groups, d_mask, n_mask, t_mask,
                 ONE_GROUP: tl.constexpr, BLOCK_D: tl.constexpr):
    """Add a (BLOCK_D, CHUNK, BLOCK_N) per-channel B/C gradient into its (batch, G, N, L) fp32 buffer."""
    nt_mask = n_mask[None, :] & t_mask[:, None]
    if ONE_GROUP:  # every channel of this program is in one group: reduce in registers first
        g = ((pid_d * BLOCK_D) // (dim // groups)).to(tl.int64)
        offs = ((pid_b * groups + g) * dstate + n[None, :]) * length + t[:, None]
        tl.atomic_add(ptr + offs, tl.sum(part, axis=0), mask=nt_mask, sem="relaxed")
    else:
        g = (d // (dim // groups)).to(tl.int64)
        offs = (((pid_b * groups + g) * dstate)[:, None, None] + n[None, None, :]) * length + t[None, :, None]
        tl.atomic_add(ptr + offs, part, mask=d_mask[:, None, None] & nt_mask[None, :, :], sem="relaxed")


def _bc_layout(t: torch.Tensor, batch: int, dim: int) -> tuple[torch.Tensor, bool, int]:
    """(contiguous tensor, is_constant, groups) with variable (batch, N, L) seen as (batch, 1, N, L)."""
    if t.dim() == 2:
        return t.contiguous(), True, dim
    if t.dim() == 3:
        return t.unsqueeze(1).contiguous(), False, 1
    return t.contiguous(), False, t.shape[1]


def _optional(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _one_group(groups: int, dim: int, block_d: int) -> bool:
    return groups == 1 or (dim // groups) % block_d == 0


def selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       discretization="mamba"):
    """Run the forward kernel. Returns (out (batch, D, L) in u's dtype, last_state (batch, D, N) fp32,
    chunk_states (batch, n_chunks, D, N) fp32 for the backward)."""
    batch, dim, length = u.shape
    dstate = A.shape[1]
    cfg = scan_config(dstate)
    u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous()
    Bk, b_const, groups_b = _bc_layout(B, batch, dim)
    Ck, c_const, groups_c = _bc_layout(C, batch, dim)
    n_chunks = triton.cdiv(length, cfg["CHUNK"])
    out = torch.empty_like(u)
    states = torch.empty(batch, n_chunks, dim, dstate, device=u.device, dtype=torch.float32)
    last = torch.empty(batch, dim, dstate, device=u.device, dtype=torch.float32)
    grid = (batch, triton.cdiv(dim, cfg["BLOCK_D"]))
    _selective_scan_fwd_kernel[grid](
        u, delta, A, Bk, Ck, _optional(D), _optional(z), _optional(delta_bias), out, states, last,
        dim, length, dstate, groups_b, groups_c,
        B_CONST=b_const, C_CONST=c_const, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, ZOH=discretization == "zoh",
        BLOCK_D=cfg["BLOCK_D"], BLOCK_N=cfg["BLOCK_N"], CHUNK=cfg["CHUNK"], num_warps=cfg["num_warps"],
    )
    return out, last, states


def selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, chunk_states, delta_softplus=False,
                       discretization="mamba"):
    """Run the backward kernel. Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each in its input's
    dtype and shape; entries for absent optional inputs are None. dlast may be None."""
    batch, dim, length = u.shape
    dstate = A.shape[1]
    cfg = scan_config(dstate)
    u, delta, A, dout = u.contiguous(), delta.contiguous(), A.contiguous(), dout.contiguous()
    Bk, b_const, groups_b = _bc_layout(B, batch, dim)
    Ck, c_const, groups_c = _bc_layout(C, batch, dim)
    f32 = dict(device=u.device, dtype=torch.float32)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = None if z is None else torch.empty_like(z)
    dA = torch.empty(batch, dim, dstate, **f32)
    dB = torch.empty(batch, dim, dstate, **f32) if b_const else torch.zeros(Bk.shape, **f32)
    dC = torch.empty(batch, dim, dstate, **f32) if c_const else torch.zeros(Ck.shape, **f32)
    dD = torch.empty(batch, dim, **f32) if D is not None else None
    dbias = torch.empty(batch, dim, **f32) if delta_bias is not None else None
    grid = (batch, triton.cdiv(dim, cfg["BLOCK_D"]))
    _selective_scan_bwd_kernel[grid](
        u, delta, A, Bk, Ck, _optional(D), _optional(z), _optional(delta_bias), chunk_states, dout, _optional(dlast),
        du, ddelta, dz, dA, dB, dC, dD, dbias,
        dim, length, dstate, groups_b, groups_c,
        B_CONST=b_const, C_CONST=c_const,
        B_ONE_GROUP=_one_group(groups_b, dim, cfg["BLOCK_D"]), C_ONE_GROUP=_one_group(groups_c, dim, cfg["BLOCK_D"]),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, HAS_DLAST=dlast is not None,
        SOFTPLUS=delta_softplus, ZOH=discretization == "zoh",
        BLOCK_D=cfg["BLOCK_D"], BLOCK_N=cfg["BLOCK_N"], CHUNK=cfg["CHUNK"], num_warps=cfg["num_warps"],
    )
    dB = dB.sum(0) if b_const else dB.view(B.shape)
    dC = dC.sum(0) if c_const else dC.view(C.shape)
    return (du, ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            None if D is None else dD.sum(0).to(D.dtype), None if z is None else dz,
            None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype))


# FusionMamba's scans (docs/fusionmamba_spec.md §3): N = 16, 4 groups of d_inner channels each.
MODEL_DSTATE = 16
MODEL_GROUPS = 4
MODEL_D_INNER = (192, 384, 768, 1536)  # 2 x dims of the default preset
_TRITON_DTYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}
_MODEL_FLAGS = {"B_CONST": False, "C_CONST": False, "HAS_D": True, "HAS_Z": False, "HAS_BIAS": True,
                "SOFTPLUS": True, "ZOH": False}
_ALL_FLAGS = {"B_CONST": False, "C_CONST": True, "HAS_D": True, "HAS_Z": True, "HAS_BIAS": True,
              "SOFTPLUS": True, "ZOH": True}


def _spec(fn, act_ptr: str, flags: dict, cfg: dict, label: str) -> dict:
    act = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddelta_ptr", "dz_ptr"}
    ints = {"dim", "length", "dstate", "groups_b", "groups_c"}
    constexprs = dict(flags, BLOCK_D=cfg["BLOCK_D"], BLOCK_N=cfg["BLOCK_N"], CHUNK=cfg["CHUNK"])
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ints:
            signature[name] = "i32"
        else:
            signature[name] = act_ptr if name in act else "*fp32"
    return {"fn": fn, "signature": signature, "constexprs": constexprs, "num_warps": cfg["num_warps"],
            "label": label}


def aot_specs() -> list[dict]:
    """Compile specs (for kernels/aot.compile_kernel) at the configs the launchers use for the model:
    grouped B/C, D skip, delta_bias, softplus, N = 16, in fp32/fp16/bf16; plus every optional branch in fp32."""
    specs = []
    cfg = scan_config(MODEL_DSTATE)
    one_group = {_one_group(MODEL_GROUPS, MODEL_GROUPS * d_inner, cfg["BLOCK_D"]) for d_inner in MODEL_D_INNER}
    assert one_group == {True}, "model channel counts must fill whole blocks for the reduced dB/dC path"
    bwd_model = dict(_MODEL_FLAGS, B_ONE_GROUP=True, C_ONE_GROUP=True, HAS_DLAST=False)  # model drops last_state
    bwd_all = dict(_ALL_FLAGS, B_ONE_GROUP=False, C_ONE_GROUP=True, HAS_DLAST=True)
    for dtype, ptr in _TRITON_DTYPES.items():
        specs.append(_spec(_selective_scan_fwd_kernel, ptr, _MODEL_FLAGS, cfg, f"fwd_model_{dtype}"))
        specs.append(_spec(_selective_scan_bwd_kernel, ptr, bwd_model, cfg, f"bwd_model_{dtype}"))
    specs.append(_spec(_selective_scan_fwd_kernel, "*fp32", _ALL_FLAGS, cfg, "fwd_all_options_fp32"))
    specs.append(_spec(_selective_scan_bwd_kernel, "*fp32", bwd_all, cfg, "bwd_all_options_fp32"))
    return specs
