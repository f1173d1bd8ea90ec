"""Fused ops: one file per op holding its kernels, launchers, autograd Function and reference."""
