"""Cost-only re-implementations of the methods compared in the FusionMamba paper's Table 6.

Each is written from its paper and the public description of its architecture (layer widths,
depths, window sizes); weights are random. They exist to count FLOPs and time a forward pass at
the same input size and on the same machine as FusionMamba, not to fuse images.
All take (x1, x2), each (B, 1, H, W), and return (B, 1, H, W) (IFCNN: (B, 3, H, W), as published).
"""
from .ifcnn import IFCNN
from .ift import IFT
from .swinfusion import SwinFusion
from .u2fusion import U2Fusion

COMPARED = {"U2F": U2Fusion, "IFCNN": IFCNN, "IFT": IFT, "SwinF": SwinFusion}

__all__ = ["COMPARED", "U2Fusion", "IFCNN", "IFT", "SwinFusion"]
