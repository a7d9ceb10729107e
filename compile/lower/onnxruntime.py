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
    return Lowered({"opset": OPSET, "graph_optimization": level,
                                  "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]
                                  if target.cuda_arch else ["CPUExecutionProvider"]})


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
