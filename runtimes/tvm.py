"""TVM: model.so (relax VM executable) on CPU, or CUDA with the artifact's precompiled cubin.

TVM loads a shared library only from a path: the verified bytes (`payload`) are written to a private file in a
0700 directory this process creates, loaded (dlopen) and removed; the cubin is served from its verified bytes."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .base import private_copy


def load(artifact_dir: Path, manifest, payload: dict[str, bytes] | None = None):
    import tvm
    from tvm import relax

    device_code = manifest.backend_info.get("device_code")
    if device_code:
        cubin = device_code["cubin"]
        binary = payload[cubin] if payload is not None else (Path(artifact_dir) / cubin).read_bytes()
        _serve_cubin(Path(artifact_dir) / cubin, binary, device_code["source_sha256"])
    if payload is None:
        lib = tvm.runtime.load_module(str(Path(artifact_dir) / manifest.entry))
    else:
        lib = _load_private(tvm, payload[manifest.entry])
    device = tvm.cuda(0) if device_code else tvm.cpu(0)
    return relax.VirtualMachine(lib, device), device


def _load_private(tvm, data: bytes):
    """Load a library from bytes (base.private_copy: removed once it is mapped)."""
    with private_copy(data) as path:
        return tvm.runtime.load_module(path)


def run(handle, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import tvm

    vm, device = handle
    result = vm["main"](*[tvm.runtime.tensor(np.asarray(x, order="C"), device) for x in inputs])
    return [t.numpy() for t in _flatten(result)]


def _flatten(result):
    if hasattr(result, "numpy"):
        return [result]
    if type(result).__name__ == "Shape":  # a shape value (ONNX Shape's output): an int64 tensor, as ONNX has it
        return [_ShapeValue(result)]
    return [t for item in result for t in _flatten(item)]


def _serve_cubin(cubin: Path, binary: bytes, source_sha256: str) -> None:
    """TVM compiles CUDA source when a library loads; answer with the cubin built at compile time."""
    import tvm_ffi

    def compile_cuda(code):
        if hashlib.sha256(str(code).encode()).hexdigest() != source_sha256:
            raise RuntimeError(f"{cubin}: CUDA source differs from the one this cubin was built from; recompile.")
        return bytearray(binary)

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)


class _ShapeValue:
    def __init__(self, shape):
        self.shape = shape

    def numpy(self) -> np.ndarray:
        return np.array([int(d) for d in self.shape], dtype=np.int64)
