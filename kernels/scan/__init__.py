"""Mamba selective-scan kernels.

api.py        edgekit.kernels.selective_scan / selective_state_update on the host build
tir_scan.py   the TensorIR kernels and their per-target schedules (x86/NEON SIMD, CUDA threads)
tir_math.py   polynomial exp/softplus/silu that stay in SIMD registers
build.py      compile for a target; disk cache of host builds
reference.py  float64 sequential reference and the PyTorch Blelloch scan (benchmark peer)
scan_cpu.cc  the same fused scan as portable C++ (vector extensions): what ExecuTorch artifacts ship
scan_executorch.cc  its ExecuTorch kernel, edgekit::selective_scan.out
native.py     builds of those (host or cross) into the kernel cache; the C++ scan on torch tensors
decomposed.py exportable chunked scan (cumsums + einsums) for ONNX Runtime, and ExecuTorch without a compiler
ssd.py        Mamba-2 (SSD): chunked matmul form and a host path on the kernel
torch_op.py   torch.ops.edgekit.selective_scan: per-backend swap of kernel or decomposition
mamba_block.py a two-layer Mamba model for export tests
bench.py      python -m edgekit.kernels.scan.bench
"""
