"""Native builds of the fused scan (scan_cpu.cc) for runtimes that run custom kernels but not TVM's libraries.

`scan_library()` builds scan_cpu.cc alone, with its C entry point `edgekit_selective_scan_f32` (`selective_scan()`
calls it on torch tensors: the tests and the kernel benchmark).

ExecuTorch: `executorch_library()` links scan_cpu.cc with scan_executorch.cc (the `edgekit::selective_scan.out`
kernel, registered with ExecuTorch's kernel registry when the library is loaded) into one shared library, for the
host or cross-compiled for a device. Its undefined ExecuTorch symbols resolve at load against the libexecutorch.so
already in the process (the Python runtime's, the C++ runner's), so one build serves both.

Built libraries are cached on disk (edgekit.kernels.cache) under a key of the sources, compiler, flags and
ExecuTorch version. Like the rest of the kernels this module imports nothing of edgekit: callers pass the compiler
and flags (edgekit/targets.py knows the targets).
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from ..cache import library

HERE = Path(__file__).parent
SCAN_SOURCE = HERE / "scan_cpu.cc"
EXECUTORCH_SOURCE = HERE / "scan_executorch.cc"
EXECUTORCH_OPS = ("edgekit::selective_scan.out",)


class BuildError(RuntimeError):
    """The native build failed: the message carries the compiler's last lines."""


def executorch_library(compiler: str, flags: list[str]) -> Path:
    """The ExecuTorch scan kernel library built with `compiler` (a C++ compiler on PATH) and `flags` (e.g.
    ["-march=native"], ["-mcpu=cortex-a76"]): a path in the kernel cache."""
    import executorch

    include = Path(next(iter(executorch.__path__))) / "include"
    if not (include / "executorch").is_dir():
        raise BuildError(f"the executorch package at {include.parent} ships no C++ headers (include/executorch).")
    version = _executorch_version()
    command = [compiler, "-std=c++17", "-O3", "-fPIC", "-shared", "-fvisibility=hidden", *flags,
               "-Wno-deprecated-declarations", "-DC10_USING_CUSTOM_GENERATED_MACROS", f"-I{include}",
               f"-I{include}/executorch/runtime/core/portable_type/c10", str(SCAN_SOURCE), str(EXECUTORCH_SOURCE)]
    key = _key({"command": command[:1] + command[1:-2], "executorch": version,
                "compiler": _compiler_version(compiler),
                "sources": [hashlib.sha256(p.read_bytes()).hexdigest() for p in (SCAN_SOURCE, EXECUTORCH_SOURCE)]})
    return library(f"scan-executorch-{key}.so", lambda path: _run([*command, "-o", str(path)]))


def scan_library(compiler: str = "g++", flags: tuple[str, ...] = ("-march=native",)) -> Path:
    """scan_cpu.cc alone as a shared library (C entry point edgekit_selective_scan_f32), in the kernel cache."""
    command = [compiler, "-std=c++17", "-O3", "-fPIC", "-shared", *flags, str(SCAN_SOURCE)]
    key = _key({"command": command[:-1], "compiler": _compiler_version(compiler),
                "source": hashlib.sha256(SCAN_SOURCE.read_bytes()).hexdigest()})
    return library(f"scan-native-{key}.so", lambda path: _run([*command, "-o", str(path)]))


@functools.lru_cache(maxsize=None)
def _host_scan():
    import ctypes

    fn = ctypes.CDLL(str(scan_library())).edgekit_selective_scan_f32
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [pointer] * 8 + [ctypes.c_int] + [size] * 5 + [pointer, pointer]
    fn.restype = ctypes.c_int
    return fn


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """The native kernel on CPU float32 torch tensors, contract as api.selective_scan (B/C [batch, N, L] or
    [batch, G, N, L]); inputs are made contiguous."""
    import torch

    B, C = (t if t.dim() == 4 else t[:, None] for t in (B, C))
    args = [None if t is None else t.detach().float().contiguous() for t in (u, delta, A, B, C, D, z, delta_bias)]
    batch, dim, length = args[0].shape
    out = torch.empty_like(args[0])
    last = torch.empty(batch, dim, args[2].shape[1])
    status = _host_scan()(*(None if t is None else t.data_ptr() for t in args), int(bool(delta_softplus)),
                          batch, dim, length, args[2].shape[1], args[3].shape[1], out.data_ptr(), last.data_ptr())
    if status:
        raise ValueError(f"the native scan takes 1..256 states and groups dividing the channels; got "
                         f"N={args[2].shape[1]}, {args[3].shape[1]} groups for {dim} channels.")
    return (out, last) if return_last_state else out


def _executorch_version() -> str:
    from importlib.metadata import version

    return version("executorch")


def _compiler_version(compiler: str) -> str:
    if shutil.which(compiler) is None:
        raise BuildError(f"C++ compiler {compiler!r} not found on PATH.")
    proc = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    return (proc.stdout or proc.stderr).splitlines()[0] if (proc.stdout or proc.stderr) else ""


def _key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def _run(command: list[str]) -> None:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
        raise BuildError(f"{command[0]} failed (exit {proc.returncode}):\n{tail}")
