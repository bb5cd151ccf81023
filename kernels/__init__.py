"""Triton kernels (installed as fastsde.kernels)."""
