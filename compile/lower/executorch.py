"""torch.export -> ExecuTorch edge dialect -> XNNPACK delegate -> .pte."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.backends import is_native, needs_cross_compiler
from edgekit.targets import Target

from ..export import export_torch, has_edgekit_scan, portable
from ..source import Source, TorchSource
from . import Lowered, executorch_sdpa


def lower(source: Source, target: Target, out: Path, entry: str) -> Lowered:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    import torch

    if not isinstance(source, TorchSource):
        raise EdgekitError(f"backend 'executorch' compiles PyTorch models; {source.path} is a .{source.kind} file. "
                           "Use --backend tvm or onnxruntime for it.")
    program = export_torch(source)
    scan, kernels = _scan_kernel(program, target, out) if has_edgekit_scan(program) else (None, [])
    if scan != NATIVE_SCAN:
        program = portable(program)
    attention = None
    if executorch_sdpa.has_sdpa(program):
        host = is_native(target)  # the Python runtime: see executorch_sdpa for why devices decompose
        program = executorch_sdpa.use_custom_sdpa(program) if host else program
        attention = executorch_sdpa.CUSTOM if host else executorch_sdpa.DECOMPOSED
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], compile_config=EdgeCompileConfig(
        _core_aten_ops_exception_list=[torch.ops.edgekit.selective_scan.default] if kernels else []))
    info = get_delegation_info(edge.exported_program().graph_module)
    program = edge.to_executorch()
    (out / entry).write_bytes(program.buffer)
    planned = int(sum(program.executorch_program.execution_plan[0].non_const_buffer_sizes))
    non_delegated = sorted({op for op, n in _non_delegated_ops(info).items() if n})
    return Lowered({
        "delegate": "XnnpackBackend",
        "delegated_subgraphs": int(info.num_delegated_subgraphs),
        "delegated_ops": int(info.num_delegated_nodes),
        "non_delegated_ops": int(info.num_non_delegated_nodes),
        "non_delegated_op_types": non_delegated,
        **({"attention": attention} if attention else {}),
        **({"scan": scan} if scan else {}),
        # shared libraries of custom kernels in the payload, loaded (registering their ops) before the program
        **({"kernel_libraries": kernels} if kernels else {}),
        # activations' memory, planned ahead of time; with dynamic axes for their largest sizes
        "planned_memory_bytes": planned,
        **({"memory_plan": "upper bound of every dynamic axis"} if source.dynamic else {}),
    })


def _non_delegated_ops(info) -> dict[str, int]:
    return {op: stats.non_delegated for op, stats in info.delegation_by_operator.items()}


NATIVE_SCAN = "edgekit fused kernel"
SCAN_LIBRARY = "scan_kernel.so"


def _scan_kernel(program, target: Target, out: Path) -> tuple[str, list[dict]]:
    """The fused scan kernel built for the target into the payload: (how the scan runs, kernel_libraries). Without
    a C++ compiler for the target the scan falls back to the chunked decomposition, with a warning saying why."""
    from edgekit.kernels.scan import native

    compiler, flags = _native_compiler(target)
    try:
        built = native.executorch_library(compiler, flags)
    except native.BuildError as exc:
        why = f"the fused scan kernel could not be built ({str(exc).splitlines()[0]})"
        warnings.warn(f"{why}; the artifact runs the chunked decomposition (far slower). Install the compiler "
                      f"(`apt-get install g++`, `g++-aarch64-linux-gnu` for aarch64 targets) and recompile.",
                      stacklevel=2)
        return f"chunked decomposition: {why}", []
    shutil.copyfile(built, out / SCAN_LIBRARY)
    return NATIVE_SCAN, [{"file": SCAN_LIBRARY, "arch": target.arch, "ops": list(native.EXECUTORCH_OPS)}]


def _native_compiler(target: Target) -> tuple[str, list[str]]:
    """C++ compiler and code-generation flags for native kernels running on the target's CPU."""
    if not needs_cross_compiler(target):
        return "g++", ["-march=native"] if is_native(target) else []
    if target.mcpu and target.mcpu != "generic":
        flags = [f"-mcpu={target.mcpu}"]
    else:
        flags = ["-march=armv8.2-a" if "+v8.2a" in target.mattr else "-march=armv8-a"]
    return target.cross_compiler or "", flags
