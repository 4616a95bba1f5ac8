"""The paper's structure ablations (Table 7) as building blocks: what each variant puts in place of
the DVSS blocks (encoder and decoder stages) and of the DFFM blocks (`Cross_block`).

Fusion blocks keep the official attribute names for what they keep, so a variant's state_dict
keys are those of the full model minus what the variant removes, plus what it adds. Inputs and
outputs are channels-last (B, h, w, C); every fusion block has DFFM's constructor.
"""
from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from .attention import ECA
from .common import LayerNorm
from .dffm import CMFM, DFEM, DFFM
from .dvss import DVSSBlock
from .evss import EVSSBlock
from .transformer import TransformerBlock


class DFFMWithoutDFEM(nn.Module):
    """"w/o DFEM" (case 4): DFFM with the DFEM pair removed, so CMFM reads the skips directly.

        cm = CMFM(ln_1(i1), ln_2(i2));  out = i1 + i2 + cm + ECA(cm)
    """

    def __init__(self, dim: int, d_state: int = 16, attn_drop: float = 0.0, cmfm_gate: str = "official",
                 backend: str = "auto"):
        super().__init__()
        self.ln_1 = LayerNorm(dim)
        self.ln_2 = LayerNorm(dim)
        self.self_attention_cross = CMFM(dim, d_state=d_state, dropout=attn_drop, gate=cmfm_gate, backend=backend)
        self.self_attention_cross_spatial = ECA()

    def forward(self, i1: torch.Tensor, i2: torch.Tensor) -> torch.Tensor:
        cm = self.self_attention_cross(self.ln_1(i1), self.ln_2(i2))
        return torch.addcmul(i1 + i2, cm, 1.0 + self.self_attention_cross_spatial.gate(cm))


class DFFMWithoutCMFM(nn.Module):
    """"w/o CMFM" (case 5): DFFM with the cross-modal fusion Mamba removed.

        F1, F2 = DFEM(i1, i2);  out = F1 + F2

    The paper's Eq. 8 (X = ECA(LN(H_f)) + D1 + D2) with the CMFM term dropped: its input norms
    `ln_1`/`ln_2`, the CMFM and the ECA on its output (all part of CMFM in the paper, §3.5) go,
    and the two enhanced features are fused by addition. Each F already carries its skip
    (F = LDC(a) + w * S + a), so the skips still reach the decoder. `cmfm_gate` is unused.
    """

    def __init__(self, dim: int, d_state: int = 16, attn_drop: float = 0.0, cmfm_gate: str = "official",
                 backend: str = "auto"):
        super().__init__()
        del d_state, attn_drop, cmfm_gate  # CMFM's settings
        self.Cross_layer = DFEM(dim, backend=backend)

    def forward(self, i1: torch.Tensor, i2: torch.Tensor) -> torch.Tensor:
        f1, f2 = self.Cross_layer(i1, i2)
        return f1 + f2


class DVSSFusion(DVSSBlock):
    """"DFFM -> DVSS" (case 3): the fusion module replaced by one plain DVSS block on the sum of
    the two skips, out = DVSS(i1 + i2) (the block keeps its own residual; no stochastic depth,
    like DFFM). `cmfm_gate` is unused."""

    def __init__(self, dim: int, d_state: int = 16, attn_drop: float = 0.0, cmfm_gate: str = "official",
                 backend: str = "auto"):
        del cmfm_gate
        super().__init__(dim, d_state=d_state, attn_drop=attn_drop, backend=backend)

    def forward(self, i1: torch.Tensor, i2: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(i1 + i2)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A model variant: the block class of every encoder / decoder stage and of every fusion slot."""

    stage_block: type
    fusion_block: type
    paper_row: str  # the row name in the paper's Table 7
    summary: str


VARIANTS: dict[str | None, Variant] = {
    None: Variant(DVSSBlock, DFFM, "FusionMamba", "the full model (official state_dict)"),
    "dvss_to_evss": Variant(EVSSBlock, DFFM, "DVSS→EVSS",
                            "every DVSS block replaced by an EfficientVMamba EVSS block"),
    "dvss_to_transformer": Variant(TransformerBlock, DFFM, "DVSS→Transformer",
                                   "every DVSS block replaced by a global-attention Transformer block"),
    "dffm_to_dvss": Variant(DVSSBlock, DVSSFusion, "DFFM→DVSS",
                            "every DFFM replaced by a DVSS block on the sum of the two skips"),
    "no_dfem": Variant(DVSSBlock, DFFMWithoutDFEM, "w/o DFEM", "DFFM without its DFEM pair"),
    "no_cmfm": Variant(DVSSBlock, DFFMWithoutCMFM, "w/o CMFM", "DFFM without its cross-modal fusion Mamba"),
}
VARIANT_NAMES = tuple(name for name in VARIANTS if name is not None)


def get_variant(name: str | None) -> Variant:
    if not (name is None or isinstance(name, str)) or name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANT_NAMES)} (or None for the full model)")
    return VARIANTS[name]


def infer_variant(keys) -> str | None:
    """Name the variant whose state_dict has these keys (None for the full model), from the stage
    blocks and the first fusion block, which every variant has."""
    keys = list(keys)

    def has(pattern: str) -> bool:
        return any(re.match(pattern, k) for k in keys)

    if has(r"layers(_up)?\.\d+\.blocks\.\d+\.attn\."):
        return "dvss_to_transformer"
    if has(r"layers(_up)?\.\d+\.blocks\.\d+\.conv_branch\.3\."):  # EVSS's pointwise conv; DVSS has an LDC there
        return "dvss_to_evss"
    if not has(r"Cross_block\.0\."):
        return None
    if has(r"Cross_block\.0\.op\."):
        return "dffm_to_dvss"
    if not has(r"Cross_block\.0\.Cross_layer\."):
        return "no_dfem"
    if not has(r"Cross_block\.0\.self_attention_cross\."):
        return "no_cmfm"
    return None
