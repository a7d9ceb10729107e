"""TVM: model.so (relax VM executable) on CPU, or CUDA with the artifact's precompiled cubin."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def load(artifact_dir: Path, manifest):
    import tvm
    from tvm import relax

    device_code = manifest.backend_info.get("device_code")
    if device_code:
        _serve_cubin(Path(artifact_dir) / device_code["cubin"], device_code["source_sha256"])
    lib = tvm.runtime.load_module(str(Path(artifact_dir) / manifest.entry))
    device = tvm.cuda(0) if device_code else tvm.cpu(0)
    return relax.VirtualMachine(lib, device), device


def run(handle, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import tvm

    vm, device = handle
    result = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(x), device) for x in inputs])
    return [t.numpy() for t in _flatten(result)]


def _flatten(result):
    if hasattr(result, "numpy"):
        return [result]
    return [t for item in result for t in _flatten(item)]


def _serve_cubin(cubin: Path, source_sha256: str) -> None:
    """TVM compiles CUDA source when a library loads; answer with the cubin built at compile time."""
    import tvm_ffi

    binary = cubin.read_bytes()

    def compile_cuda(code):
        if hashlib.sha256(str(code).encode()).hexdigest() != source_sha256:
            raise RuntimeError(f"{cubin}: CUDA source differs from the one this cubin was built from; recompile.")
        return bytearray(binary)

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)
