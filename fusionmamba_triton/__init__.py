"""FusionMamba multimodal image fusion on Triton kernels, with a fast PyTorch path on CPUs."""
__version__ = "0.1.0"

from .inference import fuse, load_model  # noqa: E402
from .model import FusionMamba  # noqa: E402

__all__ = ["FusionMamba", "fuse", "load_model", "__version__"]
