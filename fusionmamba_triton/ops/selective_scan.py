"""Selective scan (Mamba S6): reference recurrence, fast PyTorch path and Triton path.

Shapes (mamba-ssm's `selective_scan_fn` layout):
    u, delta, z: (batch, D, L)       A: (D, N) fp32
    B, C: (D, N) constant, (batch, N, L) variable, or (batch, G, N, L) grouped (channel d uses group d // (D // G))
    D, delta_bias: (D,) fp32         out: (batch, D, L) in u's dtype; last_state: (batch, D, N) fp32
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import check_same_device, resolve_backend

DISCRETIZATIONS = ("mamba", "zoh")


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
    """B or C as (batch, D, N, L) fp32, whatever its layout."""
    t = t.float()
    if t.dim() == 2:
        return t[None, :, :, None].expand(batch, dim, t.shape[1], length)
    if t.dim() == 3:
        return t[:, None].expand(batch, dim, t.shape[1], length)
    return t.repeat_interleave(dim // t.shape[1], dim=1)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, discretization="mamba"):
    """Ground truth: the recurrence of docs/fusionmamba_spec.md §4, one time step at a time, in fp32."""
    check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, discretization)
    batch, dim, length = u.shape
    dtype_out = u.dtype
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    u_f, delta_f, A_f = u.to(acc), delta.to(acc), A.to(acc)
    if delta_bias is not None:
        delta_f = delta_f + delta_bias.to(acc)[None, :, None]
    if delta_softplus:
        delta_f = F.softplus(delta_f)  # identity above threshold 20, as in mamba-ssm
    B_full = _expand_bc(B, batch, dim, length).to(acc)
    C_full = _expand_bc(C, batch, dim, length).to(acc)
    h = u_f.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dA = delta_f[:, :, t, None] * A_f  # (batch, D, N)
        decay = torch.exp(dA)
        if discretization == "mamba":
            gain = delta_f[:, :, t, None]
        else:  # exact ZOH for diagonal A: (exp(ΔA) − 1) / A, which tends to Δ as A → 0
            safe_A = torch.where(A_f == 0, torch.ones_like(A_f), A_f)
            gain = torch.where(A_f == 0, delta_f[:, :, t, None].expand_as(dA), torch.expm1(dA) / safe_A)
        h = decay * h + gain * B_full[..., t] * u_f[:, :, t, None]
        ys.append((h * C_full[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(acc)[None, :, None] * u_f
    if z is not None:
        y = y * F.silu(z.to(acc))
    y = y.to(dtype_out)
    return (y, h.float() if acc == torch.float32 else h) if return_last_state else y


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, discretization="mamba", backend="auto"):
    """Selective scan with a choice of implementation; see the module docstring for shapes."""
    check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, discretization)
    impl = resolve_backend(backend, u.device)
    if impl in ("reference", "torch"):  # TODO(scan helper): fast torch path and triton path
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, discretization)
    raise NotImplementedError("triton selective scan is not wired yet")
