"""FusionMamba multimodal image fusion on Triton kernels, with a fast PyTorch path on CPUs."""
__version__ = "0.1.0"
