"""Selective scan (Mamba S6): reference recurrence, fast PyTorch path and Triton path.

Shapes (mamba-ssm's `selective_scan_fn` layout):
    u, delta, z: (batch, D, L)       A: (D, N) fp32
    B, C: (D, N) constant, (batch, N, L) variable, or (batch, G, N, L) grouped (channel d uses group d // (D // G))
    D, delta_bias: (D,) fp32         out: (batch, D, L) in u's dtype; last_state: (batch, D, N) fp32

Backends: "reference" (selective_scan_ref, one step at a time), "torch" (selective_scan_torch, chunked,
any device), "numba" (kernels/selective_scan_cpu.py, compiled for CPUs), "triton" (kernels/selective_scan.py). All run through one torch.library op,
fusionmamba::selective_scan, which carries the autograd formula and the FLOP count.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from .backends import check_same_device, resolve_backend

DISCRETIZATIONS = ("mamba", "zoh")
# Time steps per chunk and channels per block of the "torch" path, measured on a 2-core CPU at the
# model's shapes (benchmarks/bench_selective_scan_cpu.py): larger blocks amortise Python overhead,
# smaller ones stay in cache.
TORCH_CHUNK = 16
TORCH_BLOCK_D = 128


def check_selective_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None, discretization="mamba"):
    """Raise a clear ValueError/TypeError for inputs a selective scan cannot take."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if discretization not in DISCRETIZATIONS:
        raise ValueError(f"discretization must be one of {DISCRETIZATIONS}, got {discretization!r}")
    check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    floats = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("delta_bias", delta_bias)):
        if t is not None and t.dtype not in floats:
            raise TypeError(f"{name} must be a floating tensor (fp32/fp16/bf16/fp64), got {t.dtype}")
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, D, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if min(batch, dim, length) == 0:
        raise ValueError(f"u must have at least one batch row, channel and time step, got shape {tuple(u.shape)}")
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (D, N) with D = {dim} (u's channels), got {tuple(A.shape)}")
    dstate = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2:
            if t.shape != (dim, dstate):
                raise ValueError(f"constant {name} must be (D, N) = {(dim, dstate)}, got {tuple(t.shape)}")
        elif t.dim() == 3:
            if t.shape != (batch, dstate, length):
                raise ValueError(f"variable {name} must be (batch, N, L) = {(batch, dstate, length)}, got {tuple(t.shape)}")
        elif t.dim() == 4:
            groups = t.shape[1]
            if t.shape[0] != batch or t.shape[2:] != (dstate, length) or groups == 0 or dim % groups:
                raise ValueError(
                    f"grouped {name} must be (batch, G, N, L) = ({batch}, G, {dstate}, {length}) with G dividing D = {dim}, "
                    f"got {tuple(t.shape)}"
                )
        else:
            raise ValueError(f"{name} must be (D, N), (batch, N, L) or (batch, G, N, L), got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"{name} must be (D,) = ({dim},), got {tuple(t.shape)}")


def _expand_bc(t: torch.Tensor, batch: int, dim: int, length: int) -> torch.Tensor:
    """B or C as (batch, D, N, L), whatever its layout."""
    if t.dim() == 2:
        return t[None, :, :, None].expand(batch, dim, t.shape[1], length)
    if t.dim() == 3:
        return t[:, None].expand(batch, dim, t.shape[1], length)
    return t.repeat_interleave(dim // t.shape[1], dim=1)


def _accumulation_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _prepare_delta(delta, delta_bias, delta_softplus, acc):
    delta = delta.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)  # identity above threshold 20, as in mamba-ssm
    return delta


def _gain(delta, A, discretization):
    """The input gain of B̄ = gain · B for delta (..., 1) and A (..., N): delta, or (exp(ΔA) − 1) / A for "zoh"."""
    if discretization == "mamba":
        return delta
    # Exact ZOH for diagonal A, tending to delta as A → 0. (At A == 0 exactly, autograd gives dA = 0
    # instead of the limit delta²/2 that the Triton backward uses.)
    safe_A = torch.where(A == 0, torch.ones_like(A), A)
    limit = delta.expand(torch.broadcast_shapes(delta.shape, A.shape))
    return torch.where(A == 0, limit, torch.expm1(delta * A) / safe_A)


def _finish(y, u, D, z, acc):
    if D is not None:
        y = y + D.to(acc)[None, :, None] * u
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, discretization="mamba"):
    """Ground truth: the recurrence (README, "Design notes") one time step at a time, in fp32."""
    check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, discretization)
    batch, dim, length = u.shape
    acc = _accumulation_dtype(u)
    u_f, A_f = u.to(acc), A.to(acc)
    delta_f = _prepare_delta(delta, delta_bias, delta_softplus, acc)
    B_full = _expand_bc(B, batch, dim, length).to(acc)
    C_full = _expand_bc(C, batch, dim, length).to(acc)
    h = u_f.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        delta_t = delta_f[:, :, t, None]
        h = torch.exp(delta_t * A_f) * h + _gain(delta_t, A_f, discretization) * B_full[..., t] * u_f[:, :, t, None]
        ys.append((h * C_full[..., t]).sum(-1))
    y = _finish(torch.stack(ys, dim=-1), u_f, D, z, acc).to(u.dtype)
    return (y, h) if return_last_state else y


def _chunked_linear_scan(a: torch.Tensor, x: torch.Tensor, chunk: int, inplace: bool) -> torch.Tensor:
    """h_t = a_t h_{t-1} + x_t along dim 2 of (batch, D, L, N) tensors, h_{-1} = 0; L a multiple of chunk.

    The recurrence runs over the `chunk` steps of all L / chunk chunks at once, then a short pass carries
    each chunk's final state into the next, scaled by the running product of a within the chunk.
    With inplace it overwrites a and x (about 3x faster on CPU); without, autograd can differentiate it.
    """
    batch, dim, length, dstate = x.shape
    n_chunks = length // chunk
    a = a.view(batch, dim, n_chunks, chunk, dstate)
    x = x.view(batch, dim, n_chunks, chunk, dstate)
    if not inplace:
        states, decays = [x[:, :, :, 0]], [a[:, :, :, 0]]
        for t in range(1, chunk):
            states.append(torch.addcmul(x[:, :, :, t], a[:, :, :, t], states[-1]))
            decays.append(decays[-1] * a[:, :, :, t])
        h, decay = torch.stack(states, 3), torch.stack(decays, 3)
    else:  # x becomes the in-chunk states, a the running decay products
        for t in range(1, chunk):
            x[:, :, :, t].addcmul_(a[:, :, :, t], x[:, :, :, t - 1])
            a[:, :, :, t].mul_(a[:, :, :, t - 1])
        h, decay = x, a
    if n_chunks > 1:
        carries = [torch.zeros_like(h[:, :, 0, 0])]
        for k in range(1, n_chunks):
            carries.append(torch.addcmul(h[:, :, k - 1, -1], decay[:, :, k - 1, -1], carries[-1]))
        carry = torch.stack(carries, 2)[:, :, :, None]
        h = h.addcmul_(decay, carry) if inplace else torch.addcmul(h, decay, carry)
    return h.view(batch, dim, length, dstate)


def _bc_blocks(t: torch.Tensor, pad: int, acc) -> tuple[torch.Tensor, int]:
    """B or C time-major for channel slicing: (D, 1, N) constant, else (batch, G, L + pad, N); and G (1 if constant)."""
    if t.dim() == 2:
        return t.to(acc)[:, None, :], 1
    if t.dim() == 3:
        t = t[:, None]
    return F.pad(t.to(acc).transpose(2, 3), (0, 0, 0, pad)), t.shape[1]


def _block_slice(t: torch.Tensor, groups: int, dim: int, d0: int, d1: int, constant: bool) -> torch.Tensor:
    """The part of a _bc_blocks tensor that channels d0..d1 (one group) see, broadcastable to (batch, c, L, N)."""
    if constant:
        return t[d0:d1]
    return t[:, d0 // (dim // groups), None]


def _block_bounds(dim: int, block: int, *group_counts: int) -> list[int]:
    """Channel block boundaries: every `block` channels and at every group boundary of B and C."""
    bounds = set(range(0, dim, block)) | {dim}
    for groups in group_counts:
        bounds |= set(range(0, dim, dim // groups))
    return sorted(bounds)


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         discretization="mamba", chunk=TORCH_CHUNK, block_d=TORCH_BLOCK_D):
    """Fast pure-PyTorch selective scan: (out (batch, D, L) in u's dtype, last_state (batch, D, N) fp32).

    Works on any device and under autograd. Channels go in blocks of `block_d` so that the
    (batch, block, L, N) intermediates stay in cache; time goes through _chunked_linear_scan.
    """
    batch, dim, length = u.shape
    acc = _accumulation_dtype(u)
    chunk = min(chunk, length)
    pad = -length % chunk
    # Padded steps have delta = 0 and u = 0: decay 1 and no input, so the state passes through unchanged.
    delta_f = F.pad(_prepare_delta(delta, delta_bias, delta_softplus, acc), (0, pad))
    u_f = u.to(acc)
    u_pad = F.pad(u_f, (0, pad))
    A_f = A.to(acc)
    B_t, groups_b = _bc_blocks(B, pad, acc)
    C_t, groups_c = _bc_blocks(C, pad, acc)
    bounds = _block_bounds(dim, block_d, groups_b, groups_c)
    inplace = not (torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, delta_bias)))
    ys, lasts = [], []
    for d0, d1 in zip(bounds[:-1], bounds[1:]):
        delta_blk = delta_f[:, d0:d1, :, None]
        A_blk = A_f[d0:d1, None, :]
        decay = (delta_blk * A_blk).exp_()
        x = _gain(delta_blk, A_blk, discretization) * u_pad[:, d0:d1, :, None]
        x = x * _block_slice(B_t, groups_b, dim, d0, d1, B.dim() == 2)
        h = _chunked_linear_scan(decay, x, chunk, inplace)
        lasts.append(h[:, :, -1].clone())
        C_blk = _block_slice(C_t, groups_c, dim, d0, d1, C.dim() == 2)
        ys.append((h.mul_(C_blk) if inplace else h * C_blk).sum(-1))
    y = torch.cat(ys, 1)[:, :, :length]
    return _finish(y, u_f, D, z, acc).to(u.dtype), torch.cat(lasts, 1)


def _n_chunks(backend: str, length: int) -> int:
    """How many chunk states the forward of `backend` saves for a sequence of `length` steps."""
    if backend == "numba":
        from fusionmamba_triton.kernels.selective_scan_cpu import n_chunks

        return n_chunks(length)
    from fusionmamba_triton.kernels.configs import STATE_CHUNK  # no triton needed

    return math.ceil(length / STATE_CHUNK)


def _scan_impl(backend, u, delta, A, B, C, D, z, delta_bias, delta_softplus, discretization):
    if backend == "reference":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True, discretization)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, discretization)


@torch.library.custom_op("fusionmamba::selective_scan", mutates_args=())
def selective_scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                      delta_softplus: bool, discretization: str, backend: str, save_states: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One graph node for every backend: (out, last_state, chunk_states).

    chunk_states are the states the "triton" forward (batch, n_chunks, D, N) and the "numba" forward
    (batch, D, n_chunks, N) keep for their backward, which recomputes from them; empty for the other
    backends and when save_states is False (no gradient wanted).
    """
    if backend == "triton":
        from fusionmamba_triton.kernels.selective_scan import selective_scan_fwd

        return selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, discretization, save_states)
    if backend == "numba":
        from fusionmamba_triton.kernels.selective_scan_cpu import selective_scan_fwd

        return selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, discretization, save_states)
    out, last = _scan_impl(backend, u, delta, A, B, C, D, z, delta_bias, delta_softplus, discretization)
    return out, last.float() if last.dtype != torch.float64 else last, u.new_empty(0, dtype=torch.float32)


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, discretization, backend, save_states=True):
    batch, dim, length = u.shape
    dstate = A.shape[1]
    state_dtype = torch.float64 if u.dtype == torch.float64 and backend in ("reference", "torch") else torch.float32
    last = u.new_empty(batch, dim, dstate, dtype=state_dtype)
    if backend == "triton" and save_states:
        states = u.new_empty(batch, _n_chunks(backend, length), dim, dstate, dtype=torch.float32)
    elif backend == "numba":
        shape = (batch, dim, _n_chunks(backend, length), dstate) if save_states else (0, 0, 0, 0)
        states = u.new_empty(shape, dtype=torch.float32)
    else:
        states = u.new_empty(0, dtype=torch.float32)
    return u.new_empty(u.shape), last, states


_TENSOR_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _setup_context(ctx, inputs, output):
    *tensors, ctx.delta_softplus, ctx.discretization, ctx.backend, _ = inputs
    ctx.save_for_backward(*tensors, output[2])
    ctx.set_materialize_grads(False)  # an unused last_state gets no gradient, not a tensor of zeros


def _backward(ctx, dout, dlast, _dchunk_states):
    *tensors, chunk_states = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(tensors[0])
    if ctx.backend in ("triton", "numba"):
        if ctx.backend == "triton":
            from fusionmamba_triton.kernels.selective_scan import selective_scan_bwd, selective_scan_fwd
        else:
            from fusionmamba_triton.kernels.selective_scan_cpu import selective_scan_bwd, selective_scan_fwd
        if chunk_states.numel() == 0:  # the forward ran without saving them (no input needed a gradient then)
            _, _, chunk_states = selective_scan_fwd(*tensors, ctx.delta_softplus, ctx.discretization, save_states=True)
        grads = selective_scan_bwd(dout, dlast, *tensors, chunk_states, ctx.delta_softplus, ctx.discretization)
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad)]
    else:  # recompute, then differentiate the reference / torch implementation with autograd
        wanted = [t is not None and need for t, need in zip(tensors, ctx.needs_input_grad)]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(w) if t is not None else None for t, w in zip(tensors, wanted)]
            out, last = _scan_impl(ctx.backend, *inputs, ctx.delta_softplus, ctx.discretization)
            outputs, grad_outputs = (out,), (dout,)
            if dlast is not None:
                outputs, grad_outputs = (out, last), (dout, dlast.to(last.dtype))
            leaves = [t for t, w in zip(inputs, wanted) if w]
            found = iter(torch.autograd.grad(outputs, leaves, grad_outputs, materialize_grads=True))
        grads = [next(found) if w else None for w in wanted]
    return (*grads, None, None, None, None)


selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.fusionmamba.selective_scan)
def _selective_scan_flops(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape, delta_bias_shape,
                          *args, out_shape=None, **kwargs) -> int:
    """FLOPs (not MACs) of one scan, the community convention: 9·batch·L·D·N,
    plus batch·D·L for the D skip and batch·D·L for the z gate."""
    batch, dim, length = u_shape
    flops = 9 * batch * length * dim * A_shape[1]
    if D_shape is not None:
        flops += batch * dim * length
    if z_shape is not None:
        flops += batch * dim * length
    return flops


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, discretization="mamba", backend="auto"):
    """Selective scan with a choice of implementation; see the module docstring for shapes.

    Every backend runs as the single op torch.ops.fusionmamba.selective_scan (seen as one node by
    torch.compile and counted by FlopCounterMode). "numba" computes in fp32, so "auto" sends float64
    CPU inputs to "torch".
    """
    check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, discretization)
    impl = resolve_backend(backend, u.device, has_cpu_kernel=True, dtype=u.dtype)
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    save_states = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    out, last, _ = selective_scan_op(*tensors, bool(delta_softplus), discretization, impl, save_states)
    return (out, last) if return_last_state else out
