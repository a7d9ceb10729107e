"""torch.export -> ExecuTorch edge dialect -> XNNPACK delegate -> .pte."""
from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.backends import is_native
from edgekit.targets import Target

from ..export import export_torch, portable
from ..source import Source, TorchSource
from . import Lowered, executorch_sdpa


def lower(source: Source, target: Target, out: Path, entry: str) -> Lowered:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    if not isinstance(source, TorchSource):
        raise EdgekitError(f"backend 'executorch' compiles PyTorch models; {source.path} is a .{source.kind} file. "
                           "Use --backend tvm or onnxruntime for it.")
    program = portable(export_torch(source))
    attention = None
    if executorch_sdpa.has_sdpa(program):
        host = is_native(target)  # the Python runtime: see executorch_sdpa for why devices decompose
        program = executorch_sdpa.use_custom_sdpa(program) if host else program
        attention = executorch_sdpa.CUSTOM if host else executorch_sdpa.DECOMPOSED
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
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
        # activations' memory, planned ahead of time; with dynamic axes for their largest sizes
        "planned_memory_bytes": planned,
        **({"memory_plan": "upper bound of every dynamic axis"} if source.dynamic else {}),
    })


def _non_delegated_ops(info) -> dict[str, int]:
    return {op: stats.non_delegated for op, stats in info.delegation_by_operator.items()}
