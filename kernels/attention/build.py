"""Compile the attention kernels with TVM for each target, caching built libraries on disk.

Lengths are symbolic in the TIR, so one library serves every shape: the cache key holds only
the target, the head dim (TIR-only builds) and a hash of the kernel sources.
"""

import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import tvm
from tvm.support import cc

from . import tir_kernel

_HERE = Path(__file__).parent
MICROKERNEL = _HERE / "microkernel_avx512.cc"
SPLIT_SYMBOL = "attention_split_f32"
MICROKERNEL_FLAGS = ["-O3", "-std=c++17", "-mavx512f", "-mavx512dq", "-mfma"]

AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a78ae", "mattr": ["+neon"]}
CROSS_TARGETS = {
    "aarch64": AARCH64,
    "cuda-sm87": {"kind": "cuda", "arch": "sm_87", "host": AARCH64},  # Jetson Orin
    "cuda-sm90": {"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}},
}
CROSS_CC = {"aarch64": "aarch64-linux-gnu-g++", "cuda-sm87": "aarch64-linux-gnu-g++", "cuda-sm90": "g++"}


def cache_dir() -> Path:
    """EDGEKIT_KERNEL_CACHE, else $XDG_CACHE_HOME/edgekit/kernels (default ~/.cache/edgekit/kernels)."""
    if "EDGEKIT_KERNEL_CACHE" in os.environ:
        return Path(os.environ["EDGEKIT_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgekit" / "kernels"


def host_has_avx512() -> bool:
    if platform.machine() != "x86_64":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512f" in flags and " avx512dq" in flags


def host_target() -> dict:
    return {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}


def tir_module(target: dict, head_dim: int, dtype: str = "float32") -> tvm.IRModule:
    kind = "cuda" if target["kind"] == "cuda" else "cpu"
    return tvm.IRModule({tir_kernel.SYMBOLS[dtype]: tir_kernel.portable_kernel(head_dim, kind, dtype)})


def _key(*parts) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    for source in (Path(tir_kernel.__file__), MICROKERNEL, Path(__file__)):
        digest.update(source.read_bytes())
    digest.update(tvm.__version__.encode())
    return digest.hexdigest()[:20]


def _cached(name: str, export) -> Path:
    """Path of library `name` in the cache, calling export(path) first if it is missing."""
    path = cache_dir() / f"{name}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            staged = Path(tmp) / path.name
            export(staged)
            os.replace(staged, path)  # atomic: concurrent builders never see half a library
    return path


def microkernel_fcompile(compiler="g++"):
    """An export_library fcompile that compiles and links the AVX-512 micro-kernel in."""
    if isinstance(compiler, str) and shutil.which(compiler) is None:
        raise RuntimeError(f"attention kernel: C++ compiler {compiler!r} not found; it builds the AVX-512 "
                           "micro-kernel on first use. Install it (e.g. apt-get install g++).")
    return cc.cross_compiler(compiler, options=MICROKERNEL_FLAGS, add_files=[str(MICROKERNEL)])


def build_host_library(head_dim: int) -> Path:
    """The host library: TIR driver + AVX-512 micro-kernel where available, else TIR only."""
    target = host_target()
    if host_has_avx512():
        mod = tvm.IRModule({name: func.with_attr("global_symbol", name) for name, func in
                            (("attention_f32", tir_kernel.tile_driver), (SPLIT_SYMBOL, tir_kernel.split_driver))})
        fcompile = microkernel_fcompile()
        name = "attention-x86-avx512-" + _key(target)
    else:
        mod, fcompile = tir_module(target, head_dim), None
        name = f"attention-host-d{head_dim}-" + _key(target, head_dim)
    return _cached(name, lambda path: tvm.compile(mod, target=target).export_library(str(path), fcompile=fcompile))


def build_cross_library(target_name: str, head_dim: int, dtype: str = "float32") -> Path:
    """A device library (see CROSS_TARGETS) built from the portable TIR; needs the cross compiler."""
    target = CROSS_TARGETS[target_name]
    fcompile = cc.cross_compiler(CROSS_CC[target_name])
    name = f"attention-{target_name}-d{head_dim}-{dtype}-" + _key(target, head_dim, dtype)
    return _cached(name, lambda path: tvm.compile(tir_module(target, head_dim, dtype), target=target)
                   .export_library(str(path), fcompile=fcompile))


@functools.lru_cache(maxsize=None)
def host_module(head_dim: int):
    """The loaded host library: attention_f32 (see tir_kernel for its arguments), plus the split-K
    decode function SPLIT_SYMBOL where the micro-kernel is used."""
    return tvm.runtime.load_module(str(build_host_library(head_dim)))


def pool_threads() -> int:
    """Threads in TVM's pool (TVM_NUM_THREADS; TVM's own default on x86 is half the logical CPUs)."""
    return tvm.runtime.num_threads()
