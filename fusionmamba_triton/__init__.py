"""FusionMamba multimodal image fusion on Triton kernels, with a fast PyTorch path on CPUs."""
__version__ = "0.1.0"

from .model import FusionMamba  # noqa: E402

__all__ = ["FusionMamba", "__version__"]
