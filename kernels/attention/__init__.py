"""Fused flash-style attention: reference, TIR/AVX-512 kernels, relax rewrite, benchmark."""
