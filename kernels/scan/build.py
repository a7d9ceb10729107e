"""Compile the scan kernels for a target and cache built libraries on disk (edgekit.kernels.cache).

The cache key covers everything that changes the machine code: kernel name, static options,
target, this file's KERNEL_VERSION and the TVM version. Symbolic batch/dim/length mean one build
serves every shape with the same state size and options.

Targets are TVM target dicts passed in by the caller: the kernels keep no target table of their own (the
project's is edgekit/targets.py: `get_target(name).tvm_target()`, `.cross_compiler`).
"""

import functools
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import tvm

from ..cache import library
from . import tir_scan

KERNEL_VERSION = "6"  # bump when tir_scan/tir_math change the generated code

_BUILDERS = {"scan": tir_scan.build_scan, "state_update": tir_scan.build_state_update}


def host_target() -> dict:
    return {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}


def build(kernel: str, opts: tir_scan.Options, target: dict):
    """Compile `kernel` ("scan" or "state_update") for `target` (a TVM target dict)."""
    func = _BUILDERS[kernel](opts, tir_scan.schedule_for(target["kind"]))
    return tvm.compile(func, target=target)


def _cache_key(kernel: str, opts: tir_scan.Options, target: dict) -> str:
    spec = {"kernel": kernel, "opts": asdict(opts), "target": target,
            "version": KERNEL_VERSION, "tvm": tvm.__version__}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def cross_library(kernel: str, opts: tir_scan.Options, target: dict, compiler: str | None) -> Path:
    """`kernel` compiled for a device `target` (a TVM target dict) and linked with `compiler` (None: TVM's default
    host compiler), cached on disk like host builds."""
    from tvm.support import cc

    fcompile = cc.cross_compiler(compiler) if compiler else None
    return library(f"{kernel}-{_cache_key(kernel, opts, target)}.so",
                   lambda path: build(kernel, opts, target).export_library(str(path), fcompile=fcompile))


@functools.lru_cache(maxsize=None)
def host_kernel(kernel: str, opts: tir_scan.Options):
    """The host-compiled kernel function, from the disk cache when present."""
    target = host_target()
    lib = library(f"{kernel}-{_cache_key(kernel, opts, target)}.so",
                  lambda path: build(kernel, opts, target).export_library(str(path)))
    module = tvm.runtime.load_module(str(lib))
    return module[tir_scan.FUNC_NAMES[kernel]]
