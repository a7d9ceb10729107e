"""Import a float TFLite model as a torch.export-able nn.Module.

Covers the ops of the MediaPipe BlazePose detector and landmark models: constant weights stored as float16
(DEQUANTIZE) or sparse (DENSIFY) are folded to dense float32 at import; the rest map to modules in tflite_ops.
Inputs and outputs keep TFLite's shapes (NHWC images); inside, 4-D tensors are NCHW.
"""

import struct
from pathlib import Path

import numpy as np
import torch
from ai_edge_litert import schema_py_generated as schema
from torch import nn

from edgekit.compile import tflite_ops as ops
from edgekit.errors import EdgekitError

OP_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
NUMPY_TYPES = {
    schema.TensorType.FLOAT32: np.float32,
    schema.TensorType.FLOAT16: np.float16,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.INT64: np.int64,
}


class TFLiteModule(nn.Module):
    """Runs the imported layers in TFLite's operator order, wiring tensors by their TFLite index."""

    def __init__(self, layers: list[nn.Module], wiring: list[tuple[list[int], int]], inputs: list[int],
                 outputs: list[int]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.wiring, self.inputs, self.outputs = wiring, inputs, outputs

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = {index: x.permute(ops.NCHW_ORDER) if x.dim() == 4 else x for index, x in zip(self.inputs, inputs)}
        for layer, (sources, target) in zip(self.layers, self.wiring):
            env[target] = layer(*(env[i] for i in sources))
        return tuple(env[i].permute(0, 2, 3, 1) if env[i].dim() == 4 else env[i] for i in self.outputs)


def load_tflite(path: str | Path) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Read a .tflite file; return the torch module (eval mode) and seeded uniform [0, 1) example inputs."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"TFLite model {path} not found. Pass the path of an existing .tflite file.")
    model = parse_model(path)
    if len(model.subgraphs) != 1:
        raise EdgekitError(f"{path.name} has {len(model.subgraphs)} subgraphs; only single-graph models import.")
    try:
        graph = _Graph(model, path.name)
    except PARSE_ERRORS as exc:  # indices, buffers or options that do not fit together: a damaged or hostile file
        raise _malformed(path, exc) from None
    module = TFLiteModule(graph.layers, graph.wiring, list(graph.g.inputs), list(graph.g.outputs)).eval()
    generator = torch.Generator().manual_seed(0)
    examples = tuple(torch.rand(tuple(graph.g.tensors[i].shape), generator=generator) for i in graph.g.inputs)
    return module, examples


# what the flatbuffers object API raises on bytes that are not a well-formed TFLite model (it does not verify)
PARSE_ERRORS = (struct.error, IndexError, KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError,
                OverflowError, RecursionError, MemoryError)
MAX_TFLITE_BYTES = 2 ** 31  # flatbuffers' own limit


def parse_model(path: str | Path) -> "schema.ModelT":
    """The TFLite flatbuffer as Python objects, checked in Python before any native code (the TFLite runtime, the
    importer) reads it; an EdgekitError naming the file for anything that is not a well-formed TFLite model."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_TFLITE_BYTES:
            raise EdgekitError(f"{path}: larger than 2 GiB, the TFLite format's limit; not a valid .tflite file.")
        data = path.read_bytes()
    except OSError as exc:
        raise EdgekitError(f"{path}: cannot read the TFLite model ({exc.strerror or exc}).") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise EdgekitError(f"{path}: not a TFLite model (no TFL3 file identifier). Pass a .tflite file written by "
                           "the TFLite converter.")
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
        subgraphs = model.subgraphs or []
        for g in subgraphs:
            tensors, buffers = g.tensors or [], model.buffers or []
            for i in [*(g.inputs if g.inputs is not None else []), *(g.outputs if g.outputs is not None else [])]:
                tensors[int(i)]  # noqa: B018 - IndexError for an index past the tensor list
            for t in tensors:
                buffers[t.buffer]  # noqa: B018
                if t.shape is not None and (len(t.shape) > 8 or any(int(d) < -1 for d in t.shape)):
                    raise ValueError(f"tensor {t.name!r} has shape {list(t.shape)}")
            for op in g.operators or []:
                model.operatorCodes[op.opcodeIndex]  # noqa: B018
                for i in [*(op.inputs if op.inputs is not None else []), *(op.outputs if op.outputs is not None else [])]:
                    if int(i) >= 0:
                        tensors[int(i)]  # noqa: B018
    except PARSE_ERRORS as exc:
        raise _malformed(path, exc) from None
    if not subgraphs:
        raise EdgekitError(f"{path}: TFLite model without a graph; not a usable .tflite file.")
    return model


def _malformed(path: Path, exc: BaseException) -> EdgekitError:
    text = " ".join(str(exc).split())[:200] or type(exc).__name__
    return EdgekitError(f"{path}: malformed TFLite model ({type(exc).__name__}: {text}). The file is damaged or not "
                        "a TFLite flatbuffer; export it again with the TFLite converter.")


class _Graph:
    """One pass over the operators: fold constants, build a layer for every runtime op."""

    def __init__(self, model: schema.ModelT, name: str):
        self.model, self.g, self.name = model, model.subgraphs[0], name
        self.constants = {i: c for i, t in enumerate(self.g.tensors) if (c := self._buffer(t)) is not None}
        self.layers: list[nn.Module] = []
        self.wiring: list[tuple[list[int], int]] = []
        for op in self.g.operators:
            self._add(op)

    def _buffer(self, tensor) -> np.ndarray | None:
        data = self.model.buffers[tensor.buffer].data
        if data is None or len(data) == 0:
            return None
        if tensor.type not in NUMPY_TYPES:
            raise EdgekitError(f"{self.name}: constant {tensor.name!r} has unsupported TFLite type {tensor.type}.")
        values = np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype=NUMPY_TYPES[tensor.type])
        if tensor.sparsity is not None:
            return values  # DENSIFY expands it; its shape is the dense one
        return values.reshape(tuple(tensor.shape))

    def _add(self, op) -> None:
        code = self.model.operatorCodes[op.opcodeIndex]
        name = OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), f"custom {code.customCode!r}")
        if len(op.outputs) != 1:
            raise EdgekitError(f"{self.name}: {name} with {len(op.outputs)} outputs is not supported.")
        inputs, output = [i for i in op.inputs if i >= 0], op.outputs[0]
        if name == "DEQUANTIZE" and inputs[0] in self.constants:
            self.constants[output] = self._dequantize(inputs[0])
        elif name == "DENSIFY" and inputs[0] in self.constants:
            self.constants[output] = _densify(self.constants[inputs[0]], self.g.tensors[inputs[0]])
        else:
            build = getattr(self, f"_op_{name.lower()}", None)
            if build is None:
                raise EdgekitError(f"{self.name}: TFLite op {name} is not supported by edgekit's TFLite importer.")
            layer, runtime_inputs = build(op.builtinOptions, inputs, output)
            self.layers.append(layer)
            self.wiring.append((runtime_inputs, output))

    def _dequantize(self, index: int) -> np.ndarray:
        values = self.constants[index]
        if values.dtype != np.float16:
            raise EdgekitError(f"{self.name}: DEQUANTIZE of {values.dtype} weights is not supported (float16 only).")
        return values.astype(np.float32)

    def _shape(self, index: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.g.tensors[index].shape)

    def _constant(self, index: int, what: str) -> np.ndarray:
        if index not in self.constants:
            raise EdgekitError(f"{self.name}: {what} must be a constant tensor for the TFLite importer.")
        return self.constants[index]

    def _spatial_pad(self, opts, in_shape, kernel) -> tuple[int, int, int, int]:
        if opts.padding == schema.Padding.VALID:
            return (0, 0, 0, 0)
        dilation = (getattr(opts, "dilationHFactor", 1), getattr(opts, "dilationWFactor", 1))
        top, bottom = ops.same_padding(in_shape[1], kernel[0], opts.strideH, dilation[0])
        left, right = ops.same_padding(in_shape[2], kernel[1], opts.strideW, dilation[1])
        return (left, right, top, bottom)

    def _activation(self, opts) -> ops.Activation:
        code = opts.fusedActivationFunction
        if code not in ops.Activation.BOUNDS:
            raise EdgekitError(f"{self.name}: fused activation {code} is not supported by the TFLite importer.")
        return ops.Activation(code)

    def _conv_layer(self, opts, inputs, weight, groups) -> ops.Conv:
        in_shape = self._shape(inputs[0])
        out_channels, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
        conv = nn.Conv2d(in_shape[3], out_channels, (kh, kw), stride=(opts.strideH, opts.strideW),
                         dilation=(opts.dilationHFactor, opts.dilationWFactor), groups=groups,
                         bias=len(inputs) > 2)
        conv.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(weight)), requires_grad=False)
        if len(inputs) > 2:
            bias = self._constant(inputs[2], "conv bias").astype(np.float32)
            conv.bias = nn.Parameter(torch.from_numpy(bias.copy()), requires_grad=False)
        return ops.Conv(conv, self._spatial_pad(opts, in_shape, (kh, kw)), self._activation(opts))

    def _op_conv_2d(self, opts, inputs, output):
        weight = self._constant(inputs[1], "CONV_2D weight").astype(np.float32).transpose(0, 3, 1, 2)  # OHWI->OIHW
        return self._conv_layer(opts, inputs, weight, groups=1), [inputs[0]]

    def _op_depthwise_conv_2d(self, opts, inputs, output):
        weight = self._constant(inputs[1], "DEPTHWISE_CONV_2D weight").astype(np.float32)  # 1,H,W,C*M
        weight = weight.transpose(3, 0, 1, 2)  # -> C*M,1,H,W
        return self._conv_layer(opts, inputs, weight, groups=self._shape(inputs[0])[3]), [inputs[0]]

    def _op_max_pool_2d(self, opts, inputs, output):
        kernel = (opts.filterHeight, opts.filterWidth)
        pad = self._spatial_pad(opts, self._shape(inputs[0]), kernel)
        return ops.MaxPool(kernel, (opts.strideH, opts.strideW), pad, self._activation(opts)), [inputs[0]]

    def _op_add(self, opts, inputs, output):
        if self._shape(inputs[0]) != self._shape(inputs[1]) or any(i in self.constants for i in inputs):
            raise EdgekitError(f"{self.name}: ADD is supported only between two runtime tensors of one shape.")
        return ops.Add(self._activation(opts)), inputs

    def _op_pad(self, opts, inputs, output):
        pads = self._constant(inputs[1], "PAD paddings")
        if len(pads) == 4:
            pads = pads[list(ops.NCHW_ORDER)]
        # F.pad lists (before, after) pairs starting from the last axis.
        return ops.Pad(tuple(int(p) for pair in pads[::-1] for p in pair)), [inputs[0]]

    def _op_reshape(self, opts, inputs, output):
        return ops.Reshape(self._shape(output), len(self._shape(inputs[0]))), [inputs[0]]

    def _op_concatenation(self, opts, inputs, output):
        rank = len(self._shape(output))
        axis = opts.axis % rank
        dim = ops.NCHW_ORDER.index(axis) if rank == 4 else axis
        if any(i in self.constants for i in inputs):
            raise EdgekitError(f"{self.name}: CONCATENATION of constant tensors is not supported.")
        return ops.Concat(dim, self._activation(opts)), inputs

    def _op_depth_to_space(self, opts, inputs, output):
        return ops.DepthToSpace(opts.blockSize), [inputs[0]]

    def _op_resize_bilinear(self, opts, inputs, output):
        if not (opts.halfPixelCenters or opts.alignCorners):
            raise EdgekitError(f"{self.name}: RESIZE_BILINEAR without half_pixel_centers or align_corners "
                               "(TF1 legacy sampling) is not supported.")
        size = tuple(int(s) for s in self._constant(inputs[1], "RESIZE_BILINEAR size"))
        return ops.ResizeBilinear(size, bool(opts.alignCorners)), [inputs[0]]

    def _op_logistic(self, opts, inputs, output):
        return ops.Logistic(), [inputs[0]]


def _densify(values: np.ndarray, tensor) -> np.ndarray:
    """Expand a TFLite sparse constant (dense and CSR dimensions, no blocks) to a dense array."""
    sparsity, shape = tensor.sparsity, tuple(int(d) for d in tensor.shape)
    order = list(sparsity.traversalOrder)
    if len(order) != len(shape):
        raise EdgekitError(f"block-sparse constant {tensor.name!r} is not supported by the TFLite importer.")
    # Walk the levels: `position` indexes the next level's segments (and, at the end, the values).
    position = np.zeros(1, dtype=np.int64)
    coords = np.zeros((1, 0), dtype=np.int64)
    for level in sparsity.dimMetadata:
        if level.format == schema.DimensionType.DENSE:
            size = level.denseSize
            position = (position[:, None] * size + np.arange(size)).ravel()
            coords = np.hstack([np.repeat(coords, size, axis=0), np.tile(np.arange(size), len(coords))[:, None]])
        else:
            segments = np.asarray(level.arraySegments.values, dtype=np.int64)
            indices = np.asarray(level.arrayIndices.values, dtype=np.int64)
            starts, counts = segments[position], segments[position + 1] - segments[position]
            position = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            coords = np.hstack([np.repeat(coords, counts, axis=0), indices[position][:, None]])
    dense = np.zeros(shape, dtype=values.dtype)
    axes = np.empty_like(coords)
    axes[:, order] = coords
    dense[tuple(axes.T)] = values[position]
    return dense
