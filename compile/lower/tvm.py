"""Import to relax (torch / ONNX frontends) -> tvm.compile for the target -> model.so.

aarch64 targets are cross-compiled and linked with the target's cross compiler into a real ELF
shared library; CUDA targets get DLight GPU schedules (TVM's GPU pipeline) and keep the CPU as host.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.backends import is_native, needs_cross_compiler
from edgekit.targets import Target

from ..export import export_torch, has_edgekit_scan, quiet_torch_logs
from ..source import Source, TorchSource
from . import Lowered


def import_relax(source: Source, target_dict: dict):
    import tvm

    if isinstance(source, TorchSource):
        from tvm.relax.frontend.torch import from_exported_program

        program = export_torch(source)
        kernels = {}
        if has_edgekit_scan(program):  # the selective scan becomes an R.call_tir to its TensorIR kernel
            from edgekit.kernels.scan.torch_op import relax_convert_map

            kernels = relax_convert_map(target_dict)
        program = _wrap_negative_selects(_decompose_keeping_attention(program))
        return from_exported_program(program, keep_params_as_input=False,
                                     run_ep_decomposition=False, custom_convert_map=kernels)
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    frontend = lambda: from_onnx(onnx.load(str(source.path)), keep_params_in_input=False)  # noqa: E731
    try:
        return frontend()
    except tvm.error.OpNotImplemented as exc:
        raise EdgekitError(f"{source.path}: TVM's {source.kind} importer cannot read this model: "
                           f"{str(exc).splitlines()[0]} Use --backend onnxruntime for it, or export the model "
                           "without runtime-specific fused ops.") from None


def _wrap_negative_selects(program):
    """select(x, dim, -k) -> select(x, dim, size - k): TVM 0.27's importer takes the index as is and reads out of
    bounds (garbage outputs, e.g. the chimp detector's `features[:, -1]`)."""
    import torch

    changed = False
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.select.int and node.args[2] < 0:
            x, dim, index = node.args
            node.args = (x, dim, index + int(x.meta["val"].shape[dim]))
            changed = True
    if changed:
        program.graph_module.recompile()
    return program


def _decompose_keeping_attention(program):
    """Core-ATen decompositions for the importer, except scaled_dot_product_attention: kept whole, it arrives as
    R.nn.attention, which the fused-attention pass matches."""
    import torch

    table = torch.export.default_decompositions()
    del table[torch.ops.aten.scaled_dot_product_attention.default]
    with quiet_torch_logs():
        return program.run_decompositions(table)


def lower(source: Source, target: Target, out: Path, entry: str) -> Lowered:
    import tvm

    from edgekit.kernels.attention.relax_pass import link_fcompile, use_fused_attention

    from . import tvm_schedule

    target_dict = tvm_target(target)
    mod = use_fused_attention(import_relax(source, target_dict), target_dict)
    mod, pipeline = tvm_schedule.schedule(mod, target_dict)
    try:
        executable = tvm.compile(mod, target=tvm.target.Target(target_dict))
    except Exception as exc:  # TVM raises its own error types from C++; surface the first line
        raise EdgekitError(f"TVM could not compile the model for {target.name}: {str(exc).splitlines()[0]}") from None
    # LLVM's debug info is a third of an int8 library and nothing at run time
    executable.export_library(str(out / entry), fcompile=link_fcompile(target_dict, _fcompile(target)),
                              options=["-Wl,--strip-debug"])
    info = {"target": target_dict, "pipeline": pipeline}
    if target.cuda_arch:
        info["device_code"] = _precompile_cuda(executable, target.cuda_arch, out)
    return Lowered(info)


def tvm_target(target: Target) -> dict:
    """The TVM target dict; native artifacts only run here, so they are compiled for this very CPU."""
    if not is_native(target):
        return target.tvm_target()
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}


def _fcompile(target: Target):
    if not needs_cross_compiler(target):
        return None
    from tvm.support.cc import cross_compiler

    if not target.cross_compiler or shutil.which(target.cross_compiler) is None:
        raise EdgekitError(f"cross compiler {target.cross_compiler!r} for target {target.name!r} not found. "
                           "Install it with `apt-get install g++-aarch64-linux-gnu` (or run `make setup`).")
    return cross_compiler(target.cross_compiler)


def _precompile_cuda(executable, arch: str, out: Path) -> dict:
    """This TVM build keeps CUDA kernels as source, compiled when the library loads. Compile them here
    with nvcc for the target arch and ship the cubin; runtimes/tvm.py hands it back to TVM by source hash,
    so the device needs no CUDA compiler and runs exactly the code checked here."""
    sources = [m.inspect_source("cuda") for m in _walk(executable.mod) if m.kind == "cuda"]
    if len(sources) != 1:
        raise EdgekitError(f"expected one CUDA module in the TVM build, found {len(sources)}.")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise EdgekitError("nvcc not found: GPU targets need the CUDA toolkit to build device code. Install it "
                           "(or put nvcc on PATH) and retry.")
    cubin = f"device.{arch}.cubin"
    with tempfile.TemporaryDirectory() as tmp:
        cu = Path(tmp) / "kernels.cu"
        cu.write_text(sources[0])
        done = subprocess.run([nvcc, "--cubin", f"-arch={arch}", "-O3", "-w", "-o", str(out / cubin), str(cu)],
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise EdgekitError(f"nvcc failed to build the device code for {arch}:\n{done.stderr[-2000:]}")
    return {"kind": "cuda", "arch": arch, "cubin": cubin,
            "source_sha256": hashlib.sha256(sources[0].encode()).hexdigest()}


def _walk(module):
    yield module
    for child in module.imports:
        yield from _walk(child)
