"""nn.Modules of FusionMamba; they own parameters (checkpoint names) and call `fusionmamba_triton.ops`."""
from .ablation import VARIANT_NAMES, VARIANTS, DFFMWithoutCMFM, DFFMWithoutDFEM, DVSSFusion, get_variant, infer_variant
from .attention import ECA, BiAttn
from .common import DropPath, LayerNorm, autocast_disabled
from .dffm import CMFM, DFEM, DFFM
from .dvss import DVSSBlock, DVSSLayer, Mlp
from .essm import SS2D, es2d_selective_scan
from .evss import EVSSBlock
from .ldc import LDC
from .patch import FinalPatchExpand, PatchEmbed, PatchExpand, PatchMerging
from .transformer import TransformerBlock

__all__ = [
    "ECA", "BiAttn", "DropPath", "LayerNorm", "autocast_disabled", "CMFM", "DFEM", "DFFM", "DVSSBlock", "DVSSLayer",
    "Mlp", "SS2D", "es2d_selective_scan", "LDC", "FinalPatchExpand", "PatchEmbed", "PatchExpand", "PatchMerging",
    "VARIANT_NAMES", "VARIANTS", "DFFMWithoutCMFM", "DFFMWithoutDFEM", "DVSSFusion", "get_variant", "infer_variant",
    "EVSSBlock", "TransformerBlock",
]
