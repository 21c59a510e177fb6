"""Selective-scan kernels: a float64 reference and fast backends behind one dispatcher."""
from mambaseg.ops.selective_scan import available_backends, selective_scan

__all__ = ["selective_scan", "available_backends"]
