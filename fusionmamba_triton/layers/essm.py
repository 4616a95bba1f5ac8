"""ESSM: the SS2D state-space block with the efficient skip-sampled 2D scan (ES2D); README,
"Design notes". Tensors outside the block are channels-last (B, h, w, C).

Parameter names (`x_proj_weight`, `dt_projs_weight`, `A_logs`, `Ds`, ...) and their
registration order are fixed by the official checkpoints.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .common import (LayerNorm, Linear, autocast_disabled, autocast_enabled, frozen_cast, frozen_depthwise_conv_silu,
                     frozen_linear)

from ..ops import es2d_gather_rows, es2d_merge, es2d_scan, resolve_backend, selective_scan
from ..ops import check_backend_name

NUM_GROUPS = 4  # ES2D scans the four parity sub-grids


def register_ssm_parameters(module: nn.Module, d_inner: int, dt_rank: int, d_state: int,
                            dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
    """Register on `module`, in checkpoint order: x_proj_weight (4, R + 2N, D),
    dt_projs_weight (4, D, R), dt_projs_bias (4, D), A_logs (4D, N), Ds (4D,)."""
    k = NUM_GROUPS
    x_bound = d_inner ** -0.5  # nn.Linear's default init for a D -> R + 2N projection
    module.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner).uniform_(-x_bound, x_bound))
    dt_bound = dt_rank ** -0.5
    module.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, dt_rank).uniform_(-dt_bound, dt_bound))
    dt = torch.exp(torch.rand(k, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    module.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus of dt
    a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(k * d_inner, 1)
    module.A_logs = nn.Parameter(a_log)
    module.Ds = nn.Parameter(torch.ones(k * d_inner))


def fused_cpu_scan_applies(x: torch.Tensor, backend: str, *params: torch.Tensor) -> bool:
    """Whether es2d_selective_scan takes the fused CPU kernel (kernels/es2d_scan_cpu.py): CPU tensors on the
    numba backend, D a multiple of 16, and nothing to differentiate (the kernel has no backward pass)."""
    if x.device.type != "cpu" or x.shape[1] % 16:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params)):
        return False
    return resolve_backend(backend, x.device, has_cpu_kernel=True, dtype=x.dtype) == "numba"


def ssm_projections(module: nn.Module):
    """The fused CPU scan's projections of its pixel rows for a module with register_ssm_parameters' parameters:
    rows (4, B, L', D) -> x_dbl (4, B, L', R + 2N) in the products' dtype and the step sizes (4, B, L', D) in fp32,
    one product per group each, through oneDNN with the weights packed inside FusionMamba.frozen() (for x_dbl 2.5x
    MKL's batched product at the base model's first stage, for the step sizes 2-4.7x at its last two)."""
    def project(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_dbl = torch.stack([frozen_linear(module, f"x_proj_{k}", rows[k], module.x_proj_weight[k])
                             for k in range(NUM_GROUPS)])
        rank = module.dt_projs_weight.shape[-1]
        with autocast_disabled(rows.device.type):
            steps = x_dbl[..., :rank].float().contiguous()
            dts = torch.stack([frozen_linear(module, f"dt_proj_{k}", steps[k], module.dt_projs_weight[k].float())
                               for k in range(NUM_GROUPS)])
        return x_dbl, dts
    return project


def es2d_selective_scan(x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
                        dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor,
                        backend: str = "auto", projections=None, fused: bool | None = None) -> torch.Tensor:
    """ES2D gather -> per-group projections -> 4-group selective scan -> merge.

    x: (B, D, h, w) channels-first (any strides); returns (B, h, w, D) channels-last for `out_norm`, in x's
    dtype, or in fp32 under autocast (out_norm normalises in fp32: a cast down and back up would only round).
    The step sizes (R multiply-adds each) and the scan itself run in fp32.

    On a CPU without autograd (fused_cpu_scan_applies) the scan and the merge are one numba kernel that reads
    the gathered pixel rows (4, B, L', D); `projections`, if given, computes their x projection and step sizes,
    rows -> (x_dbl (4, B, L', R + 2N), dts (4, B, L', D) in fp32) (SS2D passes ssm_projections, with weights
    packed for oneDNN). `fused`: None takes the fused kernel where it applies, False never (the separate ops),
    True insists (an error where it cannot).
    """
    batch, d_inner, h, w = x.shape
    applies = fused is not False and fused_cpu_scan_applies(x, backend, x_proj_weight, dt_projs_weight,
                                                            dt_projs_bias, A_logs, Ds)
    if fused and not applies:
        raise ValueError("fused=True needs CPU tensors on the numba backend, D a multiple of 16 and no gradients to "
                         f"compute; got x {tuple(x.shape)} on {x.device}, backend={backend!r}, "
                         f"grad enabled={torch.is_grad_enabled()}")
    if applies:
        from ..kernels.es2d_scan_cpu import es2d_selective_scan_fwd  # needs numba: imported on first use

        rows = es2d_gather_rows(x)
        if projections is not None:
            x_dbl, dts = projections(rows)
        else:
            x_dbl = torch.matmul(rows, x_proj_weight.unsqueeze(1).mT)
            with autocast_disabled(x.device.type):  # the step sizes in fp32, as below
                dts = torch.matmul(x_dbl[..., :dt_projs_weight.shape[-1]].float(),
                                   dt_projs_weight.float().unsqueeze(1).mT)
        y = es2d_selective_scan_fwd(rows, dts, x_dbl, A_logs, Ds, dt_projs_bias, h, w)
        return y if autocast_enabled(x.device.type) else y.to(x.dtype)
    dt_rank = dt_projs_weight.shape[-1]
    d_state = A_logs.shape[-1]
    xs = es2d_scan(x, step=2, backend=backend)  # (B, 4, D, L')
    length = xs.shape[-1]
    x_dbl = torch.matmul(x_proj_weight, xs)  # (B, 4, R + 2N, L'), W_x[k] @ xs_k per group
    dts, Bs, Cs = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=2)
    with autocast_disabled(x.device.type):  # fp32 out: no (B, 4D, L') cast for the scan
        dts = torch.matmul(dt_projs_weight.float(), dts.float())  # (B, 4, D, L'); the dt bias goes into the scan
    ys = selective_scan(
        xs.reshape(batch, NUM_GROUPS * d_inner, length).float(),
        dts.reshape(batch, NUM_GROUPS * d_inner, length),
        -torch.exp(A_logs.float()),
        Bs.float().contiguous(),
        Cs.float().contiguous(),
        D=Ds.float(),
        delta_bias=dt_projs_bias.float().view(-1),
        delta_softplus=True,
        backend=backend,
    )
    y = es2d_merge(ys.view(batch, NUM_GROUPS, d_inner, length), h, w, step=2, backend=backend, channels_last=True)
    return y if autocast_enabled(x.device.type) else y.to(x.dtype)


class SS2D(nn.Module):
    """ESSM, (B, h, w, C) -> (B, h, w, C).

    in_proj C -> 2D split into x and gate z; x -> depthwise 3x3 conv -> SiLU -> ES2D selective
    scan -> out_norm; times SiLU(z); out_proj D -> C. D = 2C, R = ceil(C/16).
    """

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, dropout: float = 0.0,
                 backend: str = "auto"):
        super().__init__()
        self.d_model = d_model
        self.d_inner = d_inner = expand * d_model
        register_ssm_parameters(self, d_inner, math.ceil(d_model / 16), d_state)
        self.out_norm = LayerNorm(d_inner)
        self.in_proj = Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, kernel_size=3, padding=1, groups=d_inner, bias=True)
        self.out_proj = Linear(d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.backend = check_backend_name(backend)
        self.frozen_cache: dict | None = None  # in_proj packed or cast (frozen_linear), x_proj cast (frozen_cast)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.d_inner
        # Two half-width matmuls instead of one and a split: both halves come out contiguous.
        xc = frozen_linear(self, "in_proj_x", x, self.in_proj.weight[:d])
        z = frozen_linear(self, "in_proj_z", x, self.in_proj.weight[d:], activation="silu")
        xc = frozen_depthwise_conv_silu(self, "conv2d", self.conv2d, xc.permute(0, 3, 1, 2))
        y = es2d_selective_scan(xc, frozen_cast(self, "x_proj", self.x_proj_weight),
                                self.dt_projs_weight, self.dt_projs_bias,
                                self.A_logs, self.Ds, self.backend, projections=ssm_projections(self))
        # Under autocast z is 16-bit and out_proj casts its input down anyway: the gate multiplies in z's dtype
        # (a mixed fp32 x bf16 product took 5x the time of a bf16 one in the base model).
        y = self.out_norm(y).to(z.dtype) * z
        return self.dropout(self.out_proj(y))
