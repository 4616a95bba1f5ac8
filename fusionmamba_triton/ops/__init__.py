"""Functional ops, each with a reference, a fast PyTorch path and a Triton path (`backend=`)."""
from .backends import BACKENDS, check_backend_name, resolve_backend
from .es2d import es2d_gather_rows, es2d_merge, es2d_merge_ref, es2d_scan, es2d_scan_ref
from .ldc import ldc_conv2d, ldc_conv2d_ref
from .selective_scan import selective_scan, selective_scan_ref

__all__ = [
    "BACKENDS",
    "check_backend_name",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
    "es2d_scan",
    "es2d_gather_rows",
    "es2d_scan_ref",
    "es2d_merge",
    "es2d_merge_ref",
    "ldc_conv2d",
    "ldc_conv2d_ref",
]
