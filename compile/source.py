"""What the user hands to compile: a torch module + example inputs, an .onnx file or a .tflite file."""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError


@dataclass
class TorchSource:
    module: object                  # torch.nn.Module
    example_inputs: tuple
    name: str


@dataclass
class FileSource:
    path: Path
    kind: str                       # "onnx" | "tflite"
    name: str
    example_inputs: list[np.ndarray] = field(default_factory=list)


Source = TorchSource | FileSource


def from_module(module, example_inputs, name: str | None = None) -> TorchSource:
    import torch

    if not isinstance(module, torch.nn.Module):
        raise EdgekitError(f"model must be a torch.nn.Module, got {type(module).__name__}.")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in example_inputs):
        raise EdgekitError("example inputs must be a tuple of torch.Tensor (one per forward() argument).")
    return TorchSource(module.eval(), tuple(example_inputs), name or type(module).__name__)


def from_spec(spec: str) -> Source:
    """Parse the CLI's --model: FILE.py:FUNC, model.onnx or model.tflite."""
    if spec.endswith((".onnx", ".tflite")):
        path = Path(spec)
        if not path.is_file():
            raise EdgekitError(f"{path}: model file not found.")
        kind = path.suffix[1:]
        return FileSource(path, kind, path.stem, _file_example_inputs(path, kind))
    file, sep, func = spec.rpartition(":")
    if not sep or not file.endswith(".py") or not func.isidentifier():
        raise EdgekitError(f"--model {spec!r}: expected FILE.py:FUNC (FUNC() returns (module, example_inputs)), "
                           "a .onnx file or a .tflite file.")
    return _call_builder(Path(file), func)


def _call_builder(path: Path, func: str) -> TorchSource:
    if not path.is_file():
        raise EdgekitError(f"{path}: model file not found.")
    spec = importlib.util.spec_from_file_location(f"edgekit_user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up there
    sys.path.insert(0, str(path.parent.absolute()))  # let the user's file import its neighbours
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    builder = getattr(module, func, None)
    if not callable(builder):
        raise EdgekitError(f"{path}: no function {func!r}. Define `def {func}(): return module, (example_input,)`.")
    result = builder()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise EdgekitError(f"{path}:{func}() must return (module, example_inputs_tuple), got {type(result).__name__}.")
    return from_module(result[0], result[1], name=f"{path.stem}.{func}")


def _file_example_inputs(path: Path, kind: str) -> list[np.ndarray]:
    """Seeded random inputs matching the file's declared static input shapes."""
    specs = _onnx_inputs(path) if kind == "onnx" else _tflite_inputs(path)
    rng = np.random.default_rng(0)
    return [rng.random(shape, dtype=np.float32).astype(dtype) for shape, dtype in specs]


def _onnx_inputs(path: Path) -> list[tuple[list[int], str]]:
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
        if any(d <= 0 for d in dims):
            raise EdgekitError(f"{path}: input {inp.name!r} has a dynamic shape {dims}; edgekit compiles static "
                               "shapes. Fix the shape first, e.g. `python -m onnxruntime.tools.make_dynamic_shape_"
                               "fixed --input_name NAME --input_shape 1,3,224,224 in.onnx out.onnx`.")
        specs.append((dims, str(helper.tensor_dtype_to_np_dtype(t.elem_type))))
    return specs


def _tflite_inputs(path: Path) -> list[tuple[list[int], str]]:
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_input_details()
    return [([int(d) for d in x["shape"]], np.dtype(x["dtype"]).name) for x in details]
