"""torch.export -> ONNX (dynamo exporter) -> ONNX Runtime offline graph optimisation -> model.onnx."""
from __future__ import annotations

import shutil
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.backends import is_native
from edgekit.targets import Target

from ..export import export_torch, portable, quiet_torch_logs
from ..source import Source, TorchSource
from . import Lowered

OPSET = 18


def lower(source: Source, target: Target, out: Path, entry: str) -> Lowered:
    import onnxruntime as ort

    raw = out.parent / f"{out.name}.raw.onnx"   # outside the payload dir: only the optimised graph ships
    try:
        if isinstance(source, TorchSource):
            export_onnx(source, raw)
        elif source.kind == "onnx":
            shutil.copyfile(source.path, raw)
        else:
            raise EdgekitError(f"backend 'onnxruntime' takes PyTorch or ONNX models; for {source.path} use "
                               "--backend tvm, or import it to PyTorch first.")
        # Offline 'extended' fusions are only portable to the machine that ran them; other targets get 'basic'.
        level = "extended" if is_native(target) else "basic"
        options = ort.SessionOptions()
        options.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
        options.optimized_model_filepath = str(out / entry)
        try:
            ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; all mean the graph is unusable
            from ..onnx_model import load, ort_message

            where = ort_message(exc, load(raw))
            raise EdgekitError(f"ONNX Runtime rejected the model graph at {where}. Check the node's opset and "
                               "attributes, try --backend tvm, or re-export the model.") from None
    finally:
        raw.unlink(missing_ok=True)
    shared = share_transposed_weights(out / entry)
    symbolic = _symbolic_dims(out / entry, source.dynamic)
    return Lowered({"opset": OPSET, "graph_optimization": level, "shared_transposed_weights": shared,
                    **({"symbolic_dims": symbolic} if symbolic else {}),
                                  "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]
                                  if target.cuda_arch else ["CPUExecutionProvider"]})


def _symbolic_dims(path: Path, dynamic: dict) -> dict:
    """The graph's name for each dynamic axis after offline optimisation; an axis it fixed is an error (the artifact
    would refuse every other size)."""
    if not dynamic:
        return {}
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    graph_inputs = [i for i in graph.input if i.name not in initializers]
    found = {}
    for index, axes in dynamic.items():
        dims = graph_inputs[index].type.tensor_type.shape.dim
        for axis in axes:
            if dims[axis].HasField("dim_value"):
                raise EdgekitError(f"ONNX Runtime's offline optimisation fixed input{index} axis {axis} to "
                                   f"{dims[axis].dim_value}; the artifact would take no other size. Try --backend "
                                   "executorch or tvm.")
            found[f"input{index}:{axis}"] = dims[axis].dim_param
    return found


def share_transposed_weights(path: Path) -> list[str]:
    """Store a weight used both as W and as W.T once (tied embeddings: Whisper's token embedding feeds a Gather and,
    transposed, the logits MatMul; offline constant folding writes the transpose as a second initializer). Each
    such copy becomes a Transpose node on the original, which ONNX Runtime folds again in memory at load. Returns
    the initializers replaced."""
    import hashlib

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    matrices = {t.name: numpy_helper.to_array(t) for t in graph.initializer if len(t.dims) == 2}
    order = {name: i for i, name in enumerate(matrices)}
    by_digest = {}
    for name, array in matrices.items():
        by_digest.setdefault((array.shape, array.dtype.str, hashlib.sha256(array.tobytes()).digest()), name)
    replaced = {}
    for name, array in matrices.items():
        transposed = np.ascontiguousarray(array.T)
        original = by_digest.get((transposed.shape, transposed.dtype.str,
                                  hashlib.sha256(transposed.tobytes()).digest()))
        if original and order[original] < order[name] and original not in replaced and array.size >= 4096:
            replaced[name] = original   # the later one (the folded transpose) goes; the model's own name stays
    if not replaced:
        return []
    keep = [t for t in graph.initializer if t.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = [helper.make_node("Transpose", [original], [name], name=f"edgekit_shared_{name}", perm=[1, 0])
             for name, original in replaced.items()]
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)
    onnx.save(model, str(path))
    return sorted(replaced)


def export_onnx(source: TorchSource, path: Path) -> None:
    import torch

    program = portable(export_torch(source))
    names = [f"input{i}" for i in range(len(source.example_inputs))]
    try:
        with quiet_torch_logs():
            onnx_program = torch.onnx.export(program, source.example_inputs, dynamo=True, input_names=names,
                                             opset_version=OPSET, optimize=True, verbose=False)
    except Exception as exc:  # the exporter wraps many internal errors; report its first line
        raise EdgekitError(f"model {source.name!r} could not be converted to ONNX: {str(exc).splitlines()[0]}. "
                           "Try --backend executorch or tvm.") from None
    onnx_program.save(str(path))
