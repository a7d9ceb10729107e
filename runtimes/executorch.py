"""ExecuTorch: model.pte through executorch.runtime (the Python runtime links libtorch, so torch loads here).

The program loads from the verified bytes edgekit hashed (`payload`), not from the path; so do the artifact's
custom-kernel libraries (manifest `kernel_libraries`), which register their ops with ExecuTorch when loaded."""
from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path

import numpy as np

from .base import private_copy
from .executorch_runner import kernel_files


def load(artifact_dir: Path, manifest, payload: dict[str, bytes] | None = None):
    from executorch.runtime import Runtime

    _set_threads()
    if manifest.backend_info.get("attention") == "llama.custom_sdpa":
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (registers its kernels)
    for name in kernel_files(manifest):
        _load_kernels(payload[name] if payload is not None else (Path(artifact_dir) / name).read_bytes())
    # from the verified bytes (load_program takes a buffer), not by reopening the path
    program = Runtime.get().load_program(payload[manifest.entry] if payload is not None
                                         else Path(artifact_dir) / manifest.entry)
    return program.load_method("forward"), program  # the program (and the buffer it reads) lives as long as the method


_LOADED: dict[str, ctypes.CDLL] = {}  # sha256 of a kernel library -> its handle (loaded once; never unloaded)


def _load_kernels(data: bytes) -> None:
    """dlopen a kernel library from its verified bytes (base.private_copy, removed once mapped); its static
    initialisers register its kernels with the libexecutorch.so executorch.runtime loaded."""
    digest = hashlib.sha256(data).hexdigest()
    if digest in _LOADED:
        return
    # the library leaves ExecuTorch's symbols to the libexecutorch.so in the process, which Python's import loaded
    # privately (RTLD_LOCAL): make it global, without loading a second copy
    ctypes.CDLL("libexecutorch.so", mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
    with private_copy(data) as path:
        _LOADED[digest] = ctypes.CDLL(path)


def _set_threads() -> None:
    """ExecuTorch's threadpool (XNNPACK's workers), created here, sized to the process's thread budget,
    OMP_NUM_THREADS (edgekit's --threads sets it); unset: ExecuTorch's own choice."""
    from executorch.extension.pybindings import portable_lib

    current = _quietly(portable_lib._threadpool_get_thread_count)
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0 and current != int(value):
        _quietly(lambda: portable_lib._unsafe_reset_threadpool(int(value)))


# what ExecuTorch's C++ prints on stderr while it creates or resizes its threadpool: probing /sys for CPU models
# (absent on x86 and in containers) and the new size; nothing a user can act on
THREADPOOL_CHATTER = ("[cpuinfo_utils.cpp:", "[threadpool.cpp:")


def _quietly(call):
    """`call()` with the process's stderr (fd 2) captured; lines other than THREADPOOL_CHATTER are passed on."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            return call()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not line.startswith(THREADPOOL_CHATTER):
                    print(line, file=sys.stderr)


def run(handle, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    method, _program = handle
    outputs = method.execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
    return [o.detach().numpy().copy() for o in outputs]
