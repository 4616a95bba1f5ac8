"""Compute kernels (installed as fusionmamba_triton.kernels): Triton kernels for GPUs (importing those needs
triton) and the numba-compiled CPU selective scan (selective_scan_cpu, needs numba)."""
