"""nn.Modules of FusionMamba; they own parameters (checkpoint names) and call `fusionmamba_triton.ops`."""
from .attention import ECA, BiAttn
from .common import DropPath, LayerNorm
from .dffm import CMFM, DFEM, DFFM
from .dvss import DVSSBlock, DVSSLayer, Mlp
from .essm import SS2D, es2d_selective_scan
from .ldc import LDC
from .patch import FinalPatchExpand, PatchEmbed, PatchExpand, PatchMerging

__all__ = [
    "ECA", "BiAttn", "DropPath", "LayerNorm", "CMFM", "DFEM", "DFFM", "DVSSBlock", "DVSSLayer",
    "Mlp", "SS2D", "es2d_selective_scan", "LDC", "FinalPatchExpand", "PatchEmbed", "PatchExpand", "PatchMerging",
]
