"""Compile the attention kernels with TVM for a target, caching built libraries on disk (edgekit.kernels.cache).

Lengths are symbolic in the TIR, so one library serves every shape: the cache key holds only
the target, the head dim (TIR-only builds) and a hash of the kernel sources.

Device targets are passed in as TVM target dicts with their cross compiler: the kernels keep no target table
of their own (the project's is edgekit/targets.py: `get_target(name).tvm_target()`, `.cross_compiler`).
"""

import functools
import hashlib
import json
import platform
import shutil
import subprocess
from pathlib import Path

import tvm
from tvm.support import cc

from ..cache import library
from . import tir_kernel

_HERE = Path(__file__).parent
MICROKERNEL = _HERE / "microkernel_avx512.cc"
SPLIT_SYMBOL = "attention_split_f32"
MICROKERNEL_FLAGS = ["-O3", "-std=c++17", "-mavx512f", "-mavx512dq", "-mfma"]
HEAD_DIM_STEP = 4  # the micro-kernel takes head dims that are multiples of this (its kTiles / kRows tables)

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


def microkernel_fcompile(compiler: str = "g++"):
    """An export_library fcompile that links the AVX-512 micro-kernel in (compiled once per source, cached)."""
    if isinstance(compiler, str) and shutil.which(compiler) is None:
        raise RuntimeError(f"attention kernel: C++ compiler {compiler!r} not found; it builds the AVX-512 "
                           "micro-kernel on first use. Install it (e.g. apt-get install g++).")
    return cc.cross_compiler(compiler, add_files=[str(microkernel_object(compiler))])


def microkernel_object(compiler: str = "g++") -> Path:
    """The micro-kernel compiled to a position-independent object, in the kernel cache."""
    name = f"attention-microkernel-{_key(compiler, MICROKERNEL_FLAGS)}.o"

    def build(path: Path) -> None:
        command = [compiler, *MICROKERNEL_FLAGS, "-fPIC", "-c", str(MICROKERNEL), "-o", str(path)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"attention kernel: {' '.join(command)} failed:\n{proc.stderr.strip()[-2000:]}")

    return library(name, build)


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
    return library(f"{name}.so",
                   lambda path: tvm.compile(mod, target=target).export_library(str(path), fcompile=fcompile))


def build_cross_library(target: dict, compiler: str | None, head_dim: int, dtype: str = "float32") -> Path:
    """A device library for `target` (a TVM target dict; a CUDA dict carries its CPU as "host") built from the
    portable TIR and linked with `compiler` (None: TVM's default host compiler). Building needs that compiler."""
    fcompile = cc.cross_compiler(compiler) if compiler else None
    name = f"attention-{target['kind']}-d{head_dim}-{dtype}-" + _key(target, head_dim, dtype)
    return library(f"{name}.so", lambda path: tvm.compile(tir_module(target, head_dim, dtype), target=target)
                   .export_library(str(path), fcompile=fcompile))


@functools.lru_cache(maxsize=None)
def host_module(head_dim: int):
    """The loaded host library: attention_f32 (see tir_kernel for its arguments), plus the split-K
    decode function SPLIT_SYMBOL where the micro-kernel is used."""
    return tvm.runtime.load_module(str(build_host_library(head_dim)))


def pool_threads() -> int:
    """Threads in TVM's pool (TVM_NUM_THREADS; TVM's own default on x86 is half the logical CPUs)."""
    return tvm.runtime.num_threads()
