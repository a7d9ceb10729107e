"""Compile the scan kernels for a target and cache host builds on disk.

The cache key covers everything that changes the machine code: kernel name, static options,
target, this file's KERNEL_VERSION and the TVM version. Symbolic batch/dim/length mean one build
serves every shape with the same state size and options.
"""

import functools
import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import tvm

from . import tir_scan

KERNEL_VERSION = "6"  # bump when tir_scan/tir_math change the generated code

AARCH64_NEON = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a78ae", "mattr": ["+neon"]}
AARCH64_HOST = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a78ae"}
CUDA_ORIN = {"kind": "cuda", "arch": "sm_87", "host": AARCH64_HOST}
CUDA_HOPPER = {"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}}

_BUILDERS = {"scan": tir_scan.build_scan, "state_update": tir_scan.build_state_update}


def host_target() -> dict:
    return {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}


def build(kernel: str, opts: tir_scan.Options, target: dict):
    """Compile `kernel` ("scan" or "state_update") for `target` (a TVM target dict)."""
    func = _BUILDERS[kernel](opts, tir_scan.schedule_for(target["kind"]))
    return tvm.compile(func, target=target)


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "edgekit" / "kernels"
    return Path(os.environ.get("EDGEKIT_KERNEL_CACHE", default))


def _cache_key(kernel: str, opts: tir_scan.Options, target: dict) -> str:
    spec = {"kernel": kernel, "opts": asdict(opts), "target": target,
            "version": KERNEL_VERSION, "tvm": tvm.__version__}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def cross_library(kernel: str, opts: tir_scan.Options, target: dict, compiler: str) -> Path:
    """`kernel` compiled for a device target and linked with `compiler`, cached on disk like host builds."""
    from tvm.support import cc

    path = cache_dir() / f"{kernel}-{_cache_key(kernel, opts, target)}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            staged = Path(tmp) / path.name
            build(kernel, opts, target).export_library(str(staged), fcompile=cc.cross_compiler(compiler))
            os.replace(staged, path)
    return path


@functools.lru_cache(maxsize=None)
def host_kernel(kernel: str, opts: tir_scan.Options):
    """The host-compiled kernel function, from the disk cache when present."""
    target = host_target()
    path = cache_dir() / f"{kernel}-{_cache_key(kernel, opts, target)}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Export to a temporary name then rename, so concurrent processes never load a partial file.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            build(kernel, opts, target).export_library(tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    module = tvm.runtime.load_module(str(path))
    return module[tir_scan.FUNC_NAMES[kernel]]
