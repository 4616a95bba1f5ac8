"""DFFM (official `VSSBlock_Cross_new`): DFEM + CMFM; README, "Design notes".

Attribute names are the checkpoint's: `Cross_layer` is the DFEM, `self_attention_cross` the
CMFM, `self_attention_cross_spatial` a channel ECA despite its name.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ECA
from .common import LayerNorm, Linear, frozen_cast, frozen_depthwise_conv_silu, frozen_linear
from ..ops import check_backend_name
from .essm import es2d_selective_scan, register_ssm_parameters, ssm_projections
from .ldc import LDC

CMFM_GATES = ("official", "paper")


class DifferentialEnhance(nn.Module):
    """Holds `lastconv` (1x1, C -> C/2), present in checkpoints but unused by the official forward."""

    def __init__(self, dim: int):
        super().__init__()
        self.lastconv = nn.Conv2d(dim, dim // 2, kernel_size=1)


class DFEM(nn.Module):
    """Dynamic feature enhancement of a pair, channels-last (B, h, w, C) in and out.

    S = a1 + a2, w12 = sigmoid(GAP(a1 - a2)), w21 = sigmoid(GAP(a2 - a1));
    F1 = LDC_a(a1) + w12 * S + a1,  F2 = LDC_b(a2) + w21 * S + a2.
    """

    def __init__(self, dim: int, backend: str = "auto"):
        super().__init__()
        self.texture_enhance1 = LDC(dim, dim, backend=backend)
        self.texture_enhance2 = LDC(dim, dim, backend=backend)
        self.Diff_enhance = DifferentialEnhance(dim)

    def forward(self, a1: torch.Tensor, a2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = a1 + a2
        mean_diff = (a1.mean(dim=(1, 2)) - a2.mean(dim=(1, 2)))[:, None, None, :]  # GAP(a1 - a2)
        tex1 = self.texture_enhance1(a1.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        tex2 = self.texture_enhance2(a2.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        f1 = torch.addcmul(tex1 + a1, torch.sigmoid(mean_diff), both)
        f2 = torch.addcmul(tex2 + a2, torch.sigmoid(-mean_diff), both)
        return f1, f2


class CMFM(nn.Module):
    """Cross-modal fusion Mamba, (B, h, w, C) x 2 -> (B, h, w, C); D = 2C.

    [x1, z1] = in_proj1(n1), x2 = first half of in_proj2(n2); x_i = SiLU(DWConv(x_i)) with one
    shared depthwise conv; u = x1 * x2 + x1 + x2 -> ES2D selective scan -> out_norm -> y;
    out = out_proj(y * z1 + y * z2) with z1 = SiLU(z1_raw) and
      gate="official": z2 = SiLU(z1), as the released code and checkpoints do;
      gate="paper":    z2 = SiLU(second half of in_proj2(n2)), the paper's symmetric gate.
    """

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, dropout: float = 0.0,
                 gate: str = "official", backend: str = "auto"):
        super().__init__()
        if gate not in CMFM_GATES:
            raise ValueError(f"cmfm gate must be one of {CMFM_GATES}, got {gate!r}")
        self.d_model = d_model
        self.d_inner = d_inner = expand * d_model
        self.gate = gate
        register_ssm_parameters(self, d_inner, math.ceil(d_model / 16), d_state)
        self.out_norm = LayerNorm(d_inner)
        self.in_proj1 = Linear(d_model, 2 * d_inner, bias=False)
        self.in_proj2 = Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, kernel_size=3, padding=1, groups=d_inner, bias=True)
        self.out_proj = Linear(d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.backend = check_backend_name(backend)
        self.frozen_cache: dict | None = None  # in_proj packed or cast (frozen_linear), x_proj cast (frozen_cast)

    def forward(self, n1: torch.Tensor, n2: torch.Tensor) -> torch.Tensor:
        d, batch = self.d_inner, n1.shape[0]
        x1 = frozen_linear(self, "in_proj1_x", n1, self.in_proj1.weight[:d])
        x2 = frozen_linear(self, "in_proj2_x", n2, self.in_proj2.weight[:d])
        z1 = frozen_linear(self, "in_proj1_z", n1, self.in_proj1.weight[d:], activation="silu")
        if self.gate == "official":
            z2 = F.silu(z1)
        else:
            z2 = frozen_linear(self, "in_proj2_z", n2, self.in_proj2.weight[d:], activation="silu")
        # One call of the shared depthwise conv over both inputs, stacked along the batch.
        xs = frozen_depthwise_conv_silu(self, "conv2d", self.conv2d, torch.cat([x1, x2], dim=0).permute(0, 3, 1, 2))
        x1, x2 = xs[:batch], xs[batch:]
        u = torch.addcmul(x1 + x2, x1, x2)
        y = es2d_selective_scan(u, frozen_cast(self, "x_proj", self.x_proj_weight),
                                self.dt_projs_weight, self.dt_projs_bias,
                                self.A_logs, self.Ds, self.backend, projections=ssm_projections(self))
        y = self.out_norm(y).to(z1.dtype)  # the gate in z's dtype under autocast, as in SS2D
        return self.dropout(self.out_proj(y * (z1 + z2)))


class DFFM(nn.Module):
    """Fuse two skips (B, h, w, C): F1, F2 = DFEM(i1, i2); cm = CMFM(ln_1(F1), ln_2(F2));
    out = i1 + i2 + cm + ECA(cm). No DropPath, no MLP."""

    def __init__(self, dim: int, d_state: int = 16, attn_drop: float = 0.0, cmfm_gate: str = "official",
                 backend: str = "auto"):
        super().__init__()
        self.ln_1 = LayerNorm(dim)
        self.ln_2 = LayerNorm(dim)
        self.Cross_layer = DFEM(dim, backend=backend)
        self.self_attention_cross = CMFM(dim, d_state=d_state, dropout=attn_drop, gate=cmfm_gate, backend=backend)
        self.self_attention_cross_spatial = ECA()

    def forward(self, i1: torch.Tensor, i2: torch.Tensor) -> torch.Tensor:
        f1, f2 = self.Cross_layer(i1, i2)
        cm = self.self_attention_cross(self.ln_1(f1), self.ln_2(f2))
        return torch.addcmul(i1 + i2, cm, 1.0 + self.self_attention_cross_spatial.gate(cm))  # + cm + ECA(cm)
