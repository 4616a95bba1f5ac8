"""Triton kernels (installed as fusionmamba_triton.kernels). Importing this needs triton."""
