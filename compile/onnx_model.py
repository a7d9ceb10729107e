"""ONNX models as users bring them: check the file, find the inputs that carry shapes and indices, fold inputs into
the graph as constants, and turn ONNX / ONNX Runtime errors into messages that name the node and op."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

ARTIFACT_DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")

# op -> {operand position: (operand name, kind)}. "shape": the value sets an output's shape (or which axes an op
# works on): random values are wrong, and TVM compiles such operands only as constants. "index": the value picks
# elements; random values are meaningless (all zeros) or out of range.
_AXES1 = {1: ("axes", "shape")}
SHAPE_OPERANDS: dict[str, dict[int, tuple[str, str]]] = {
    "Reshape": {1: ("shape", "shape")},
    "Expand": {1: ("shape", "shape")},
    "Slice": {1: ("starts", "shape"), 2: ("ends", "shape"), 3: ("axes", "shape"), 4: ("steps", "shape")},
    "Resize": {1: ("roi", "shape"), 2: ("scales", "shape"), 3: ("sizes", "shape")},
    "Upsample": {1: ("scales", "shape")},
    "Pad": {1: ("pads", "shape"), 3: ("axes", "shape")},
    "Split": {1: ("split", "shape")},
    "Squeeze": _AXES1, "Unsqueeze": _AXES1,
    **{op: _AXES1 for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                             "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
    "Tile": {1: ("repeats", "shape")},
    "TopK": {1: ("K", "shape")},
    "ConstantOfShape": {0: ("input", "shape")},
    "Range": {0: ("start", "shape"), 1: ("limit", "shape"), 2: ("delta", "shape")},
    "OneHot": {0: ("indices", "index"), 1: ("depth", "shape")},
    "CumSum": {1: ("axis", "shape")}, "CumProd": {1: ("axis", "shape")},
    "Trilu": {1: ("k", "shape")},
    "CenterCropPad": {1: ("shape", "shape")},
    "Col2Im": {1: ("image_shape", "shape"), 2: ("block_shape", "shape")},
    "MaxUnpool": {1: ("I", "index"), 2: ("output_shape", "shape")},
    "DFT": {1: ("dft_length", "shape"), 2: ("axis", "shape")},
    "STFT": {1: ("frame_step", "shape"), 3: ("frame_length", "shape")},
    "AffineGrid": {1: ("size", "shape")},
    "Compress": {1: ("condition", "shape")},
    "NonMaxSuppression": {2: ("max_output_boxes_per_class", "shape")},
    "ReverseSequence": {1: ("sequence_lens", "index")},
    "RoiAlign": {2: ("batch_indices", "index")},
    "Gather": {1: ("indices", "index")},
    "GatherElements": {1: ("indices", "index")},
    "GatherND": {1: ("indices", "index")},
    "Scatter": {1: ("indices", "index")},
    "ScatterElements": {1: ("indices", "index")},
    "ScatterND": {1: ("indices", "index")},
    "TensorScatter": {2: ("write_indices", "index")},
}
# operands that carry data random values serve, but that TVM's importer takes only as constants: folded for TVM
CONSTANT_OPERANDS: dict[str, dict[int, str]] = {
    "OneHot": {2: "values"},
    "Pad": {2: "constant_value"},
}
# producers whose outputs come from tensor shapes, not values: a shape operand computed from them is fine
_SHAPE_SOURCES = {"Shape", "Size", "Constant", "ConstantOfShape"}


@dataclass(frozen=True)
class ShapeUse:
    input: str          # graph input name
    node: str           # "Reshape node 'r0' (#3)"
    op: str
    operand: str        # the op's operand name
    kind: str           # "shape" | "index"

    def describe(self) -> str:
        return f"input {self.input!r} feeds the {self.operand!r} operand of {self.node}"


def node_label(node, index: int) -> str:
    return f"{node.op_type} node {node.name!r} (#{index})" if node.name else f"{node.op_type} node #{index}"


def load(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, missing external data, ...
        raise EdgekitError(f"{path}: not a readable ONNX model ({_first_line(exc)}).") from None


def check(model, path: Path) -> None:
    """The ONNX checker (and shape inference) on the model, as one readable message."""
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise EdgekitError(f"{path}: the ONNX checker rejects the model: {_checker_message(exc, model)} Re-export the "
                           "model, or upgrade its opset with onnx.version_converter.") from None
    try:
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # InferenceError names the node: "(op_type:Reshape, node name: r0): ..."
        raise EdgekitError(f"{path}: ONNX shape inference fails: {_checker_message(exc, model)} The model is "
                           "inconsistent (input shapes or attributes); re-export it.") from None


_CHECKER_NODE = re.compile(r"\(op_type:(\w+), node name: ([^)]*)\):")


def _checker_message(exc: Exception, model=None) -> str:
    """The checker's / shape inference's text, its "(op_type:X, node name: n)" as edgekit names nodes."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(lines[:3])
    text = re.sub(r"^\[ShapeInferenceError\] Inference error\(s\): ", "", text)

    def name(m):
        index = _node_index(model, m.group(2)) if model is not None and m.group(2) else None
        label = f"{m.group(1)} node {m.group(2)!r}" if m.group(2) else f"{m.group(1)} node"
        return (label + (f" (#{index})" if index is not None else "")) + ":"

    text = _CHECKER_NODE.sub(name, text)
    return text if text.endswith(".") else text + "."


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: list[int]
    dtype: str
    symbolic: dict = None  # axis -> the dim's name in the graph (dim_param, or "" when it has none)


def input_specs(model, path: Path) -> list[InputSpec]:
    """The graph's real inputs (initializers excluded) with artifact dtypes checked up front. A symbolic axis has
    size 0 in `shape` and its dim_param in `symbolic` (it compiles once --dynamic gives its range)."""
    from onnx import helper

    initializers = {i.name for i in model.graph.initializer}
    users = {}
    for index, node in enumerate(model.graph.node):
        for name in list(node.input) + list(node.output):
            users.setdefault(name, node_label(node, index))
    specs = []
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        t = inp.type.tensor_type
        if not inp.type.HasField("tensor_type"):
            raise EdgekitError(f"{path}: input {inp.name!r} is not a tensor (sequence, map or optional); edgekit "
                               "artifacts take tensors. Export the model with tensor inputs.")
        if not t.HasField("shape"):
            raise EdgekitError(f"{path}: input {inp.name!r} has no shape (not even its rank); edgekit needs each "
                               "input's rank. Re-export the model with input shapes.")
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
        symbolic = {axis: d.dim_param for axis, d in enumerate(t.shape.dim) if not d.HasField("dim_value")}
        dtype = _dtype_name(helper, t.elem_type)
        _check_dtype(path, "input", inp.name, dtype, users.get(inp.name))
        specs.append(InputSpec(inp.name, dims, dtype, symbolic))
    for out in model.graph.output:
        if out.type.HasField("tensor_type"):
            _check_dtype(path, "output", out.name, _dtype_name(helper, out.type.tensor_type.elem_type),
                         users.get(out.name))
    return specs


def _dtype_name(helper, elem_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
        from onnx import TensorProto

        return TensorProto.DataType.Name(elem_type).lower()


def _check_dtype(path: Path, what: str, name: str, dtype: str, node: str | None = None) -> None:
    if dtype in ARTIFACT_DTYPES:
        return
    where = f" ({'read by' if what == 'input' else 'from'} {node})" if node else ""
    fix = (" Convert the model to float32 first (cast its inputs and initializers, then export again); no backend "
           "here compiles float64 artifacts." if dtype == "float64" else
           " Cast it to one of those in the model (a Cast node at the graph's edge) and export again.")
    raise EdgekitError(f"{path}: {what} {name!r}{where} has dtype {dtype}; edgekit artifacts carry "
                       f"{', '.join(ARTIFACT_DTYPES)}.{fix}")


def shape_uses(model, with_constant: bool = False) -> list[ShapeUse]:
    """Graph inputs whose values reach a shape-like operand (Reshape's shape, Slice's starts, Gather's indices...),
    traced back through the nodes that compute the operand, stopping at Shape/Size/Constant. with_constant: also
    the operands TVM takes only as constants (kind "constant")."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = {i.name for i in graph.input} - initializers
    producer = {out: node for node in graph.node for out in node.output}
    found: dict[tuple[str, str, str], ShapeUse] = {}
    for index, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        operands = dict(SHAPE_OPERANDS.get(node.op_type, {}))
        if with_constant:
            operands.update({pos: (name, "constant") for pos, name in CONSTANT_OPERANDS.get(node.op_type, {}).items()})
        for pos, (operand, kind) in operands.items():
            if pos >= len(node.input) or not node.input[pos]:
                continue
            for name in _reaching_inputs(node.input[pos], producer, inputs):
                key = (name, node_label(node, index), operand)
                found.setdefault(key, ShapeUse(name, key[1], node.op_type, operand, kind))
    return list(found.values())


def _reaching_inputs(value: str, producer: dict, inputs: set[str]) -> list[str]:
    seen, stack, hits = set(), [value], []
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in inputs:
            hits.append(v)
            continue
        node = producer.get(v)
        if node is None or node.op_type in _SHAPE_SOURCES:
            continue
        stack.extend(i for i in node.input if i)
    return hits


def fold(model, values: dict[str, np.ndarray], path: Path):
    """The model with these graph inputs turned into initializers (a copy)."""
    import onnx
    from onnx import numpy_helper

    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    by_name = {i.name: i for i in graph.input}
    for name, value in values.items():
        if name not in by_name:
            real = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
            raise EdgekitError(f"--const-inputs {name}: {path} has no input {name!r}; its inputs are "
                               f"{', '.join(real)}.")
        t = by_name[name].type.tensor_type
        want = _dtype_name(onnx.helper, t.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if len(dims) != value.ndim or any(d is not None and d != s for d, s in zip(dims, value.shape)):
            raise EdgekitError(f"--const-inputs {name}: the array is {value.dtype.name}{list(value.shape)}; the "
                               f"model's input is {want}{dims}.")
        if value.dtype.name != want:
            if not np.can_cast(value.dtype, want, casting="same_kind"):
                raise EdgekitError(f"--const-inputs {name}: the array is {value.dtype.name}; the input is {want}.")
            value = value.astype(want)
        graph.input.remove(by_name[name])
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, order="C"), name))
    return folded


_ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")


def ort_message(exc: Exception, model=None) -> str:
    """ONNX Runtime's error as one line naming the node and op when ORT says which."""
    text = str(exc)
    m = _ORT_NODE.search(text)
    status = text.split("Status Message:", 1)[-1].strip().splitlines()[0] if "Status Message:" in text else \
        re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text.strip().splitlines()[0] if text.strip() else "")
    if m:
        op, name = m.groups()
        index = _node_index(model, name) if model is not None else None
        where = f"{op} node {name!r}" + (f" (#{index})" if index is not None else "")
        return f"{where}: {status}"
    return status or type(exc).__name__


def _node_index(model, name: str) -> int | None:
    for i, node in enumerate(model.graph.node):
        if node.name == name:
            return i
    return None


def _first_line(exc: Exception) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0].strip() if lines else type(exc).__name__


def output_producers(path: Path) -> list[str]:
    """For each graph output, the node that computes it (for messages about outputs)."""
    try:
        model = load(path)
    except EdgekitError:
        return []
    producer = {o: node_label(n, i) for i, n in enumerate(model.graph.node) for o in n.output}
    return [producer.get(o.name, f"graph input {o.name!r}") for o in model.graph.output]


def nodes_named_in(path: Path, text: str) -> list[str]:
    """Nodes whose op or name a backend's error text mentions (TVM's compile errors name kernels, not nodes)."""
    try:
        model = load(path)
    except EdgekitError:
        return []
    low = text.lower()
    hits = [node_label(n, i) for i, n in enumerate(model.graph.node)
            if (n.name and n.name in text) or re.search(rf"\b{re.escape(n.op_type.lower())}", low)]
    return hits
