"""What the user hands to compile: a torch module + example inputs, an .onnx file or a .tflite file."""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import io
import sys
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

from . import dynamic


@dataclass
class TorchSource:
    module: object                  # torch.nn.Module
    example_inputs: tuple
    name: str
    inputs_record: dict | None = None
    dynamic: dict = field(default_factory=dict)  # compile/dynamic.py Dims by input index: axes that vary


@dataclass
class FileSource:
    path: Path
    kind: str                       # "onnx" | "tflite"
    name: str
    example_inputs: list[np.ndarray] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)
    inputs_record: dict | None = None    # where the example inputs came from (+ sha256): recorded in the manifest
    const_inputs: dict = field(default_factory=dict)  # input name -> {sha256, shape, dtype, reason}: folded away
    origin: Path | None = None           # the user's file, when `path` is a private copy with inputs folded in
    dynamic: dict = field(default_factory=dict)  # compile/dynamic.py Dims by input index: the symbolic axes


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


def from_spec(spec: str, example_inputs=None, const_inputs=None, dynamic=None) -> Source:
    """Parse the CLI's --model: FILE.py:FUNC, model.onnx or model.tflite. `example_inputs`: the user's (an .npz
    path, a dict by input name or a list of arrays); `const_inputs`: {input name: array or .npy path} to fold into
    an ONNX graph as constants; `dynamic`: the axes that vary (compile/dynamic.py normalize())."""
    if const_inputs and not spec.endswith(".onnx"):
        raise EdgekitError("--const-inputs folds inputs of an ONNX model into its graph; --model is not a .onnx file.")
    if spec.endswith(".onnx"):
        return _onnx_source(Path(spec), example_inputs, const_inputs or {}, dynamic)
    if dynamic and spec.endswith(".tflite"):
        raise EdgekitError(f"--dynamic: {spec} is a .tflite model, verified against the TFLite runtime at its one "
                           "input shape. Export the model to ONNX (or compile its PyTorch source) to vary a dimension.")
    if spec.endswith(".tflite"):
        path = Path(spec)
        if not path.is_file():
            raise EdgekitError(f"{path}: model file not found.")
        specs = _tflite_inputs(path)
        names = [f"input{i}" for i in range(len(specs))]
        if example_inputs is not None:
            arrays, record = user_inputs(example_inputs, names, specs)
        else:
            arrays, record = _random_inputs(specs), {"source": "generated", "how": "seeded random [0, 1)"}
        return FileSource(path, "tflite", path.stem, arrays, names, record)
    file, sep, func = spec.rpartition(":")
    if not sep or not file.endswith(".py") or not func.isidentifier():
        raise EdgekitError(f"--model {spec!r}: expected FILE.py:FUNC (FUNC() returns (module, example_inputs)), "
                           "a .onnx file or a .tflite file.")
    source = _call_builder(Path(file), func)
    source = with_user_inputs(source, example_inputs, dynamic) if example_inputs is not None else source
    return with_dynamic(source, dynamic)


def torch_input_names(source: TorchSource) -> list[str]:
    """forward()'s parameter names for the example inputs (input0... where they do not line up)."""
    count = len(source.example_inputs)
    try:
        params = list(inspect.signature(source.module.forward).parameters)[:count]
    except (TypeError, ValueError):
        params = []
    return params if len(params) == count else [f"input{i}" for i in range(count)]


def with_dynamic(source: TorchSource, given) -> TorchSource:
    """The torch source with its dynamic axes (None: static), checked against its example inputs."""
    names = torch_input_names(source)
    source.dynamic = dynamic.normalize(given, names)
    dynamic.check(source.dynamic, names, [t.detach().numpy() for t in source.example_inputs])
    return source


def with_user_inputs(source: TorchSource, example_inputs, given_dynamic=None) -> TorchSource:
    """A torch source whose example inputs are the user's arrays (named by forward()'s parameters or input0...);
    on axes named dynamic their size may differ from the builder's example."""
    import torch

    ours = [t.detach().numpy() for t in source.example_inputs]
    names = torch_input_names(source)
    dims = dynamic.normalize(given_dynamic, names)
    specs = [([None if a in dims.get(i, {}) else n for a, n in enumerate(x.shape)], x.dtype.name)
             for i, x in enumerate(ours)]
    arrays, record = user_inputs(example_inputs, names, specs)
    return TorchSource(source.module, tuple(torch.from_numpy(np.array(x)) for x in arrays), source.name, record)


def user_inputs(given, names: list[str], specs: list[tuple[list[int], str]] | None = None
                ) -> tuple[list[np.ndarray], dict]:
    """The user's example inputs in input order, and their manifest record (sha256 of the .npz bytes, or of the
    arrays). `given`: an .npz path, a dict {name or inputN: array} or a list of arrays."""
    record = {"source": "user"}
    if isinstance(given, (str, Path)):
        given, digest = _read_npz(Path(given))
        record.update(digest)
    if isinstance(given, dict):
        arrays = []
        for i, name in enumerate(names):
            key = name if name in given else f"input{i}" if f"input{i}" in given else None
            if key is None:
                raise EdgekitError(f"example inputs: no array for input {name!r} (#{i}); name the arrays "
                                   f"{', '.join(names)} (or input0, input1, ...). Got: {', '.join(given) or 'none'}.")
            arrays.append(given[key])
        extra = set(given) - set(names) - {f"input{i}" for i in range(len(names))}
        if extra:
            raise EdgekitError(f"example inputs: {', '.join(sorted(extra))} name no input of the model; its inputs "
                               f"are {', '.join(names)}.")
    elif isinstance(given, (list, tuple)):
        arrays = list(given)
        if len(arrays) != len(names):
            raise EdgekitError(f"example inputs: got {len(arrays)} arrays; the model has {len(names)} inputs: "
                               f"{', '.join(names)}.")
    else:
        raise EdgekitError(f"example inputs must be an .npz path, a dict of arrays or a list of arrays, got "
                           f"{type(given).__name__}.")
    out = []
    for i, (name, x) in enumerate(zip(names, arrays)):
        if hasattr(x, "detach"):
            x = x.detach().numpy()
        if not isinstance(x, np.ndarray):
            raise EdgekitError(f"example input {name!r} is a {type(x).__name__}; expected a numpy array.")
        if specs is not None:  # a None in the shape: a dynamic axis, any size (its range is checked later)
            shape, dtype = specs[i]
            if x.ndim != len(shape) or any(want is not None and n != want for n, want in zip(x.shape, shape)) \
                    or x.dtype.name != dtype:
                want = ", ".join("any" if n is None else str(n) for n in shape)
                raise EdgekitError(f"example input {name!r} is {x.dtype.name}{list(x.shape)}; the model's input "
                                   f"is {dtype}[{want}].")
        out.append(np.asarray(x, order="C"))  # (ascontiguousarray would make a 0-d array 1-d)
    if "sha256" not in record:
        record["sha256"] = arrays_digest(out)
    record["names"] = list(names)
    return out, record


def arrays_digest(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for x in arrays:
        h.update(f"{x.dtype.str}{list(x.shape)}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def _onnx_source(path: Path, example_inputs, const_inputs: dict, given_dynamic=None) -> FileSource:
    from . import onnx_model

    if not path.is_file():
        raise EdgekitError(f"{path}: model file not found.")
    model = onnx_model.load(path)
    onnx_model.check(model, path)
    consts = {name: _const_array(name, value) for name, value in const_inputs.items()}
    records = {name: {"sha256": arrays_digest([x]), "shape": list(x.shape), "dtype": x.dtype.name,
                      "reason": "--const-inputs", **({"file": str(const_inputs[name])} if isinstance(
                          const_inputs[name], (str, Path)) else {})} for name, x in consts.items()}
    work = path
    if consts:
        model = onnx_model.fold(model, consts, path)
        work = _scratch_copy(model, path)
    specs = onnx_model.input_specs(model, path)
    names = [s.name for s in specs]
    dims = dynamic.normalize(given_dynamic, names, {i: s.symbolic for i, s in enumerate(specs)})
    _check_onnx_dims(path, specs, dims)
    if example_inputs is not None:
        arrays, record = user_inputs(example_inputs, names, [(_shape_or_none(s, dims.get(i, {})), s.dtype)
                                                             for i, s in enumerate(specs)])
    else:
        uses = onnx_model.shape_uses(model)
        if uses:
            u = uses[0]
            more = f" ({len(uses) - 1} more such use(s): " + "; ".join(x.describe() for x in uses[1:4]) + ")" \
                if len(uses) > 1 else ""
            raise EdgekitError(
                f"{path}: {u.describe()}{more}. Its values set {'a shape' if u.kind == 'shape' else 'indices'}, so "
                f"edgekit will not guess them (random values would be wrong or meaningless). Give them: "
                f"--example-inputs FILE.npz (arrays named {', '.join(names)}) to compile and verify on your values, "
                f"or --const-inputs {u.input}=FILE.npy to fold {u.input!r} into the graph as a constant (the "
                f"artifact then has one input fewer).")
        levels = dynamic.sizes(dims)
        middle = levels[len(levels) // 2]  # the odd size between the bounds
        arrays = _random_inputs([([middle[d.name] if (d := dims.get(i, {}).get(a)) else n
                                   for a, n in enumerate(s.shape)], s.dtype) for i, s in enumerate(specs)])
        record = {"source": "generated", "how": "seeded random [0, 1)", "sha256": arrays_digest(arrays)}
    dynamic.check(dims, names, arrays)
    source = FileSource(work, "onnx", path.stem, arrays, names, record, records, path if work != path else None,
                        dims)
    if work != path:
        weakref.finalize(source, _remove_tree, work.parent)
    return source


def _shape_or_none(spec, axes: dict) -> list:
    return [None if a in axes else n for a, n in enumerate(spec.shape)]


def _check_onnx_dims(path: Path, specs, dims: dict) -> None:
    """Every symbolic axis has a range from --dynamic; every axis named there is symbolic in the graph."""
    for i, s in enumerate(specs):
        given = dims.get(i, {})
        missing = [a for a in s.symbolic if a not in given]
        if missing:
            axes = ", ".join(f"axis {a}" + (f" ({s.symbolic[a]!r})" if s.symbolic[a] else "") for a in missing)
            example = ",".join(f"{a}=1..512" for a in missing)
            raise EdgekitError(f"{path}: input {s.name!r} has symbolic {axes}; edgekit compiles it once you give each "
                               f"range (it verifies the smallest and largest size): --dynamic '{s.name}:{example}' "
                               "with your bounds. Or fix the shape: `python -m onnxruntime.tools.make_dynamic_shape_"
                               "fixed --input_name NAME --input_shape 1,3,224,224 in.onnx out.onnx`.")
        fixed = [a for a in given if a not in s.symbolic]
        if fixed:
            a = fixed[0]
            size = s.shape[a] if a < len(s.shape) else None
            what = f"is fixed to {size} in the graph" if size is not None else f"does not exist (rank {len(s.shape)})"
            raise EdgekitError(f"--dynamic {s.name}:{a}: axis {a} of {s.name!r} {what}; only the model's symbolic "
                               "axes can vary. Re-export the model with that axis dynamic (torch.onnx.export's "
                               "dynamic_shapes), or compile its PyTorch source with --dynamic.")


def _const_array(name: str, value) -> np.ndarray:
    if isinstance(value, (str, Path)):
        try:
            return np.load(value, allow_pickle=False)
        except FileNotFoundError:
            raise EdgekitError(f"--const-inputs {name}={value}: file not found.") from None
        except ValueError as exc:
            raise EdgekitError(f"--const-inputs {name}={value}: not a readable .npy array ({exc}).") from None
    if hasattr(value, "detach"):
        value = value.detach().numpy()
    return np.asarray(value)


def _scratch_copy(model, path: Path) -> Path:
    """The folded model in a private temp dir, deleted with its source."""
    import onnx

    work = Path(tempfile.mkdtemp(prefix="edgekit-onnx-")) / path.name
    onnx.save(model, str(work))
    return work


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


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


def _random_inputs(specs: list[tuple[list[int], str]]) -> list[np.ndarray]:
    """Seeded random [0, 1) inputs matching the declared static input shapes (only for inputs that carry data:
    inputs that set shapes or indices are refused first)."""
    rng = np.random.default_rng(0)
    return [rng.random(shape, dtype=np.float32).astype(dtype) for shape, dtype in specs]


def _tflite_inputs(path: Path) -> list[tuple[list[int], str]]:
    from ai_edge_litert.interpreter import Interpreter

    from .tflite_import import parse_model

    parse_model(path)  # checked in Python first: the interpreter below is native code
    try:
        details = Interpreter(model_path=str(path)).get_input_details()
    except (ValueError, RuntimeError) as exc:
        text = " ".join(str(exc).split())[:300]
        raise EdgekitError(f"{path}: the TFLite runtime cannot read this model ({text}). Export it again with the "
                           "TFLite converter.") from None
    return [([int(d) for d in x["shape"]], np.dtype(x["dtype"]).name) for x in details]


def from_user_arrays(module, example_inputs, name: str | None = None) -> TorchSource:
    """A torch module with the user's example inputs as arrays (.npz path, dict by forward() parameter name or
    inputN, or a list)."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise EdgekitError(f"model must be a torch.nn.Module, got {type(module).__name__}.")
    try:
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        params = []
    if isinstance(example_inputs, (list, tuple)):
        names = (params if len(params) == len(example_inputs) else
                 [f"input{i}" for i in range(len(example_inputs))])
    else:
        if isinstance(example_inputs, (str, Path)):
            example_inputs, digest = _read_npz(Path(example_inputs))
        else:
            digest = None
        keys = list(example_inputs)
        names = params if params and all(k in params or k.startswith("input") for k in keys) else \
            [f"input{i}" for i in range(len(keys))]
        arrays, record = user_inputs(example_inputs, names)
        if digest:
            record.update(digest)
        return TorchSource(module.eval(), tuple(torch.from_numpy(np.array(x)) for x in arrays),
                           name or type(module).__name__, record)
    arrays, record = user_inputs(list(example_inputs), names)
    return TorchSource(module.eval(), tuple(torch.from_numpy(np.array(x)) for x in arrays),
                       name or type(module).__name__, record)


def _read_npz(path: Path) -> tuple[dict, dict]:
    if not path.is_file():
        raise EdgekitError(f"--example-inputs {path}: file not found.")
    raw = path.read_bytes()
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise EdgekitError(f"--example-inputs {path}: not a readable .npz ({exc}). Write it with "
                           "numpy.savez(path, NAME=array, ...).") from None
    return arrays, {"file": str(path), "sha256": hashlib.sha256(raw).hexdigest()}


def fold_shape_inputs(source: FileSource, lowering) -> FileSource:
    """For a backend that compiles shape operands only as constants (TVM: static shapes), fold the inputs that set
    shapes into the graph with the user's example values; recorded in the manifest's const_inputs."""
    if not getattr(lowering.lower_module(), "CONSTANT_SHAPE_OPERANDS", False) or not source.input_names:
        return source
    from . import onnx_model

    model = onnx_model.load(source.path)
    uses = [u for u in onnx_model.shape_uses(model, with_constant=True) if u.kind in ("shape", "constant")]
    names = list(dict.fromkeys(u.input for u in uses))
    if not names:
        return source
    values = {n: source.example_inputs[source.input_names.index(n)] for n in names}
    folded = onnx_model.fold(model, values, source.path)
    work = _scratch_copy(folded, source.path)
    consts = dict(source.const_inputs)
    for n, x in values.items():
        use = next(u for u in uses if u.input == n)
        consts[n] = {"sha256": arrays_digest([x]), "shape": list(x.shape), "dtype": x.dtype.name,
                     "reason": f"{lowering.name} takes shape operands only as constants: folded with the example "
                               f"value ({use.describe()})"}
    keep = [i for i, n in enumerate(source.input_names) if n not in values]
    varying = [source.input_names[i] for i in source.dynamic if i not in keep]
    if varying:
        raise EdgekitError(f"{source.origin or source.path}: input {varying[0]!r} sets a shape and {lowering.name} "
                           "folds such inputs with their example value, so it cannot also be --dynamic. Use --backend "
                           "onnxruntime for a varying shape operand.")
    result = FileSource(work, "onnx", source.name, [source.example_inputs[i] for i in keep],
                        [source.input_names[i] for i in keep], source.inputs_record, consts,
                        source.origin or source.path, {keep.index(i): axes for i, axes in source.dynamic.items()})
    weakref.finalize(result, _remove_tree, work.parent)
    return result
