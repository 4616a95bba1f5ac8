"""Compute kernels (installed as fusionmamba_triton.kernels): Triton kernels for GPUs (importing those needs
triton) and the numba-compiled CPU kernels (selective_scan_cpu and ldc_cpu, need numba)."""
