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
    """The model as a relax module; a dynamic axis is a symbolic variable whose bounds are attributes of `main`
    (TVM plans memory for the upper bound). Batch norms after convolutions are folded into their weights and zero
    pads into their padding (_folded_batch_norms, _padded_convolutions); rewrites of the frontends' calls follow
    (_rewrite_calls), then weights used only transposed are stored transposed (_pretransposed_weights)."""
    mod = _padded_convolutions(_folded_batch_norms(_import_relax(source, target_dict)))
    rewrites = {"relax.take": _bounded_take, "relax.strided_slice": _inbound_slice, "relax.nn.conv1d": _framed_conv1d,
                "relax.clip": _clip_bounds}
    return _pretransposed_weights(_rewrite_calls(mod, rewrites))


def _rewrite_calls(mod, rewrites: dict):
    """Every relax function of `mod` with each call of an op named in `rewrites` ({op name: call -> new call, or
    None to keep it}) replaced, in one walk."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            rewrite = rewrites.get(call.op.name) if isinstance(call.op, tvm.ir.Op) else None
            new = rewrite(call) if rewrite else None
            return call if new is None else new

    for gv, fn in list(mod.functions.items()):
        if isinstance(fn, relax.Function):
            mod[gv] = Rewriter(mod).visit_expr(fn)
    return mod


def _folded_batch_norms(mod):
    """Inference batch norms after a convolution with constant weights (a torch module's Conv2d + BatchNorm2d, with
    or without the conv's bias) folded into the convolution's weights and bias, here with numpy: the normalisation
    then costs nothing and the conv's epilogue (bias, ReLU) fuses into its kernel; unfolded, each batch norm was a
    pass of its own over the feature map. (TVM's FoldBatchnormToConv2D leaves the arithmetic to FoldConstant, which
    this pipeline does not run: see tvm_schedule.fuse.)"""
    import numpy as np
    from tvm import relax
    from tvm.relax.dpl import TupleGetItemPattern, is_const, is_op, wildcard

    data, weight, bias = wildcard(), is_const(), is_const()
    conv = is_op("relax.nn.conv2d")(data, weight)
    with_bias = is_op("relax.add")(conv, bias | is_op("relax.reshape")(bias, wildcard()))  # [O] as [1, O, 1, 1]
    stats = [is_const() for _ in range(4)]  # gamma, beta, mean, var
    norm = is_op("relax.nn.batch_norm")(conv | with_bias, *stats)

    def fold(expr, matches):
        conv_call, norm_call = matches[conv], matches[norm]
        attrs = conv_call.attrs
        gamma, beta, mean, var = (matches[s].value.numpy().astype(np.float64) for s in stats)
        w = matches[weight].value.numpy()
        if (attrs.kernel_layout != "OIHW" or attrs.data_layout != "NCHW" or int(norm_call.attrs.axis) not in (1, -3)
                or norm_call.attrs.training or w.dtype != np.float32 or gamma.shape != (w.shape[0],)):
            return expr
        b = 0.0
        if with_bias in matches:
            b = matches[bias].value.numpy().astype(np.float64)
            added = [_const_int(d) for d in matches[with_bias].args[1].ty.shape]  # the bias as the add sees it
            if b.size != w.shape[0] or added not in ([1, w.shape[0], 1, 1], [w.shape[0], 1, 1]):
                return expr
            b = b.reshape(-1)
        scale = (gamma if norm_call.attrs.scale else 1.0) / np.sqrt(var + float(norm_call.attrs.epsilon))
        shift = (beta if norm_call.attrs.center else 0.0) + (b - mean) * scale
        folded = relax.const((w * scale.reshape(-1, 1, 1, 1)).astype(np.float32))
        out = relax.Call(conv_call.op, [matches[data], folded], attrs)
        return relax.op.add(out, relax.const(shift.astype(np.float32).reshape(1, -1, 1, 1)))

    return _rewrite_matches(mod, TupleGetItemPattern(norm, 0), fold)


def _padded_convolutions(mod):
    """A zero pad of the spatial axes before a conv2d (TFLite's asymmetric SAME padding, spelled out by the
    frontends) folded into the conv's own padding: the pad was a copy of the feature map per call, and a layout
    change (tvm_schedule.channels_last) would transpose around it."""
    from tvm import relax
    from tvm.relax.dpl import is_op, wildcard

    data, weight = wildcard(), wildcard()
    pad = is_op("relax.nn.pad")(data)
    conv = is_op("relax.nn.conv2d")(pad, weight)

    def fold(expr, matches):
        pad_call, conv_call = matches[pad], matches[conv]
        attrs, widths = conv_call.attrs, [_const_int(w) for w in pad_call.attrs.pad_width]
        value = pad_call.attrs.pad_value if hasattr(pad_call.attrs, "pad_value") else 0.0
        if (attrs.data_layout != "NCHW" or pad_call.attrs.pad_mode != "constant" or float(value) != 0.0
                or None in widths or len(widths) != 8 or any(widths[:4]) or min(widths) < 0):
            return expr
        top, bottom, left, right = widths[4:]
        old = [int(p) for p in attrs.padding]
        padding = [old[0] + top, old[1] + left, old[2] + bottom, old[3] + right]
        return relax.op.nn.conv2d(matches[data], matches[weight], strides=attrs.strides, padding=padding,
                                  dilation=attrs.dilation, groups=attrs.groups, data_layout=attrs.data_layout,
                                  kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout,
                                  out_dtype=attrs.out_dtype)

    return _rewrite_matches(mod, conv, fold)


def _rewrite_matches(mod, pattern, fold):
    """Every match of the dataflow `pattern` in `mod`'s relax functions replaced by fold(expr, matches) (relax's
    rewrite_call), then the bindings the replacements left unused removed."""
    from tvm import relax
    from tvm.relax.dpl import rewrite_call

    for gv, fn in list(mod.functions.items()):
        if isinstance(fn, relax.Function):
            mod[gv] = rewrite_call(pattern, fold, fn)
    return relax.transform.DeadCodeElimination()(mod)


def _clip_bounds(call):
    """`R.clip(x, lo, hi)` of a float tensor as minimum(maximum(x, lo), hi): the same values, and elementwise ops
    that a layout change passes through (relax gives clip no layout rule) and that fuse into a conv's epilogue."""
    import numpy as np
    from tvm import relax

    x, low, high = call.args
    if not isinstance(x.ty, relax.TensorType) or str(x.ty.dtype) not in ("float32", "float16"):
        return None
    bounds = []
    for bound in (low, high):  # FloatImm (or PrimValue of one)
        value = getattr(bound, "value", None)
        value = getattr(value, "value", value)
        if not isinstance(value, (int, float)):
            return None
        bounds.append(relax.const(np.asarray(value, dtype=str(x.ty.dtype))))
    return relax.op.minimum(relax.op.maximum(x, bounds[0]), bounds[1])


def _pretransposed_weights(mod):
    """Each 2-D constant that the graph uses only as its transpose (a Linear's weight: x @ W.T) or as the table of a
    row gather (a tied embedding: take(W, ids) beside the logits' x @ W.T), stored transposed once, here: the
    transposes otherwise ran on every call (95 ms of Whisper's 117 ms decoder step copied its 51865 x 384 token
    embedding). A gather of rows then takes columns of the transposed table. The payload still holds one copy."""
    import numpy as np
    import tvm
    from tvm import relax

    transpose, take = tvm.ir.Op.get("relax.permute_dims"), tvm.ir.Op.get("relax.take")

    def kind(call, position):
        if call.op.same_as(transpose) and (call.attrs.axes is None or [int(a) for a in call.attrs.axes] == [1, 0]):
            return "T"
        if call.op.same_as(take) and position == 0 and int(call.attrs.axis) == 0:
            return "rows"
        return "other"

    uses: dict = {}

    @relax.expr_functor.visitor
    class Uses(relax.PyExprVisitor):
        def visit_call_(self, call):
            super().visit_call_(call)
            for i, arg in enumerate(call.args):
                if isinstance(arg, tvm.ir.expr.Constant) and len(getattr(arg.value, "shape", ())) == 2:
                    uses.setdefault(arg, set()).add(kind(call, i) if isinstance(call.op, tvm.ir.Op) else "other")

    functions = [(gv, fn) for gv, fn in mod.functions.items() if isinstance(fn, relax.Function)]
    for _, fn in functions:
        Uses().visit_expr(fn)
    flipped = {c: relax.const(np.ascontiguousarray(c.value.numpy().T)) for c, k in uses.items()
               if "T" in k and k <= {"T", "rows"}}
    if not flipped:
        return mod

    @relax.expr_functor.mutator
    class Flip(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call.op, tvm.ir.Op) or not call.args or call.args[0] not in flipped:
                return call
            table = flipped[call.args[0]]
            if call.op.same_as(transpose):
                return table
            index = call.args[1]
            columns = relax.op.take(table, index, axis=1, mode=call.attrs.mode)  # [features, *index.shape]
            rank = index.ty.ndim
            return columns if rank == 0 else relax.op.permute_dims(columns, [*range(1, rank + 1), 0])

    for gv, fn in functions:
        mod[gv] = Flip(mod).visit_expr(fn)
    return mod


def _bounded_take(call):
    """`R.take(..., mode="fast")` (the frontends' select / index / Gather) as mode "clip": the same result for every
    in-range index and none out of memory for the others; TVM prints a warning per fast-mode take it legalizes."""
    from tvm import relax

    if call.attrs.mode != "fast":
        return None
    return relax.op.take(call.args[0], call.args[1], axis=call.attrs.axis, mode="clip")


FRAMED_CONV_MIN_KERNEL = 16
FRAMED_CONV_COLUMNS = 32  # the matmul's columns padded to a multiple of two AVX-512 vectors (8 NEON, 4 AVX2)


def _framed_conv1d(call):
    """A conv1d over a one-channel signal with a long kernel (an STFT as a windowed DFT basis: 400 taps every 160
    samples) as the matmul it is: frames [batch, L_out, K] gathered from the signal, times the kernels [K, C_out].
    The CPU rule vectorises a matmul over contiguous weights; as a conv its lanes were 160 samples apart (a gather
    per FMA: Samba's front end took 155 ms of 170). The frame indices are computed at run time, so a dynamic
    signal length stays symbolic."""
    from tvm import relax

    attrs = call.attrs
    data, weight = call.args
    if (attrs.groups != 1 or attrs.data_layout != "NCW" or attrs.kernel_layout != "OIW"
            or attrs.out_layout not in ("", "NCW") or any(int(p) for p in attrs.padding)
            or int(attrs.dilation[0]) != 1 or str(attrs.out_dtype) not in ("", "void", "float32")):
        return None
    if not all(isinstance(t.ty, relax.TensorType) and t.ty.shape is not None for t in (data, weight)):
        return None
    out_channels, in_channels, taps = weight.ty.shape
    if not (_const_int(in_channels) == 1 and (_const_int(taps) or 0) >= FRAMED_CONV_MIN_KERNEL
            and _const_int(out_channels)):
        return None
    batch, _, _ = data.ty.shape
    frames = call.ty.shape[2]  # L_out: symbolic for a dynamic signal
    stride, taps = int(attrs.strides[0]), int(taps)
    starts = relax.op.multiply(relax.op.arange(0, frames, 1, "int64"),
                               relax.const(stride, "int64"))
    index = relax.op.add(relax.op.expand_dims(starts, 1), relax.op.arange(0, taps, 1, "int64"))  # [L_out, K]
    signal = relax.op.reshape(data, relax.ShapeExpr([batch, data.ty.shape[2]]))
    framed = relax.op.take(signal, index, axis=1, mode="clip")  # [batch, L_out, K]
    kernels = relax.op.reshape(weight, relax.ShapeExpr([out_channels, taps]))
    padded = -(-int(out_channels) // FRAMED_CONV_COLUMNS) * FRAMED_CONV_COLUMNS
    if padded != int(out_channels):  # zero kernels up to whole vector tiles (a partial tile would run scalar)
        kernels = relax.op.nn.pad(kernels, [0, padded - int(out_channels), 0, 0])
    product = relax.op.matmul(framed, relax.op.permute_dims(kernels, [1, 0]))  # [batch, L_out, padded]
    if padded != int(out_channels):
        product = relax.op.strided_slice(product, [2], [0], [int(out_channels)], assume_inbound=True)
    return relax.op.permute_dims(product, [0, 2, 1])


def _const_int(value) -> int | None:
    from tvm import tirx

    return int(value) if isinstance(value, (int, tirx.IntImm)) else None


def _inbound_slice(call):
    """`R.strided_slice` of symbolic bounds (a causal conv's `y[..., :L]` at a dynamic L) marked `assume_inbound`
    where every begin and end provably lies within its axis: TVM 0.27 legalizes the unmarked form with a clamp
    whose if_then_else it cannot type in a shape (relax "FInferType ... prim.if_then_else")."""
    import functools

    import tvm
    from tvm import relax, tirx

    if call.attrs.assume_inbound:
        return None
    analyzer = tvm.sym.Analyzer()

    def proven(cond) -> bool:  # a bool when both sides are constants
        if isinstance(cond, bool):
            return cond
        try:
            return bool(analyzer.can_prove(cond))
        except (TypeError, ValueError, RuntimeError):  # not an integer expression: not provably in bounds
            return False

    x, axes, begin, end = call.args[:4]
    strides = call.args[4] if len(call.args) > 4 else None
    if not isinstance(x.ty, relax.TensorType) or x.ty.shape is None or not all(
            isinstance(t, relax.Tuple) for t in (axes, begin, end)):
        return None
    if strides is not None and not (isinstance(strides, relax.Tuple) and all(
            isinstance(v, int) and v == 1 for v in map(_prim, strides.fields))):
        return None
    # sizes are never negative (the analyzer does not know that of a shape's variables): e.g. a strided conv's
    # output length (L - 1) // 4 + 1 is then provably >= 0
    sizes = [v for d in x.ty.shape for v in tirx.analysis.undefined_vars(d)]
    with analyzer.constraint_scope(functools.reduce(tirx.And, [v >= 0 for v in sizes], tirx.const(True))):
        for a, b, e in zip(axes.fields, begin.fields, end.fields):
            extent = x.ty.shape[int(_prim(a)) % x.ty.ndim]
            b, e = _prim(b), _prim(e)
            # negative bounds count from the end: left to TVM's clamping legalization
            if not (proven(b >= 0) and proven(e >= 0) and (isinstance(b, int) and b == 0 or proven(b <= e))
                    and proven(e <= extent)):
                return None
    return relax.op.strided_slice(*call.args, assume_inbound=True)


def _prim(value):
    """A slice bound: an int when constant, else the expression as given."""
    from tvm import tirx

    return int(value) if isinstance(value, tirx.IntImm) else value


def _import_relax(source: Source, target_dict: dict):
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
    return _with_bounds(import_onnx(source.path), _onnx_bounds(source))


def _with_bounds(mod, bounds: dict[str, tuple[int, int]]):
    """Each relax function gets the bounds of its symbolic variables as TVM's `tir_var_lower_bound` /
    `tir_var_upper_bound` attributes, as the torch frontend sets them from torch.export's ranges."""
    if not bounds:
        return mod
    from tvm import relax

    for gv, fn in list(mod.functions.items()):
        if isinstance(fn, relax.Function):
            names = {v.name for v in relax.analysis.defined_symbolic_vars(fn)}
            lower = {name: lo for name, (lo, _) in bounds.items() if name in names}
            upper = {name: hi for name, (_, hi) in bounds.items() if name in names}
            if upper:
                mod[gv] = fn.with_attrs({"tir_var_lower_bound": lower, "tir_var_upper_bound": upper})
    return mod


def _onnx_bounds(source) -> dict[str, tuple[int, int]]:
    """An ONNX model's symbolic axes are variables named by their dim_param: each gets its --dynamic range."""
    if not source.dynamic:
        return {}
    import onnx

    graph = onnx.load(str(source.path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    return {inputs[index].type.tensor_type.shape.dim[axis].dim_param: (d.min, d.max)
            for index, axes in source.dynamic.items() for axis, d in axes.items()}


# TVM compiles static shapes: an ONNX input that sets a shape (Reshape's shape, Slice's starts, ...) must be a
# constant. The pipeline folds such inputs with the user's example values (recorded as const_inputs).
CONSTANT_SHAPE_OPERANDS = True


class _NodeFailed(Exception):
    def __init__(self, index: int, node, exc: Exception):
        super().__init__(str(exc))
        self.index, self.node, self.exc = index, node, exc


def import_onnx(path: Path):
    """TVM's ONNX importer, one node at a time so that a failure names its node, op and reason."""
    import contextlib
    import io
    import types
    import warnings

    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx, onnx_frontend

    from ..onnx_model import _first_line, node_label

    model = _expand_layernorm_stats(onnx.load(str(path)))
    _check_onnx_for_tvm(model, path)
    importer = onnx_frontend.ONNXGraphImporter
    construct = importer._construct_nodes

    def one_node_at_a_time(self, graph):
        for index, node in enumerate(graph.node):
            try:
                construct(self, types.SimpleNamespace(node=[node]))
            except Exception as exc:  # noqa: BLE001 - every converter error, mapped to its node below
                raise _NodeFailed(index, node, exc) from exc

    importer._construct_nodes = one_node_at_a_time
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            mod = from_onnx(model, keep_params_in_input=False)
    except _NodeFailed as failed:
        exc = failed.exc
        if isinstance(exc, KeyError) and failed.node.op_type == "Attention" and not failed.node.domain:
            why = (f"TVM reads 'Attention' as Microsoft's contrib op (attribute {exc} missing), not ONNX's "
                   "standard Attention (opset 23)")
        elif isinstance(exc, KeyError):
            why = f"missing attribute or input {exc}"
        else:
            why = f"{type(exc).__name__}: {_first_line(exc)}"
        const = _non_constant_operands(model, failed.node)
        hint = (f" Its operand(s) {', '.join(const)} are graph inputs: fold them with --const-inputs NAME=FILE.npy."
                if const else "")
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        raise EdgekitError(f"{path}: TVM's ONNX importer fails on {node_label(failed.node, failed.index)} "
                           f"(opset {opset}): {why}.{hint} Use --backend onnxruntime for this model, or re-export "
                           "it at another opset (onnx.version_converter).") from None
    except tvm.error.OpNotImplemented as exc:
        raise EdgekitError(f"{path}: TVM's onnx importer cannot read this model: {_first_line(exc)} (nodes "
                           f"{_nodes_of(model, str(exc))}). Use --backend onnxruntime for it, or export the model "
                           "without runtime-specific fused ops.") from None
    except Exception as exc:  # graph-level failures (inputs, initializers, outputs)
        raise EdgekitError(f"{path}: TVM's ONNX importer fails outside any one node: {type(exc).__name__}: "
                           f"{_first_line(exc)}. Use --backend onnxruntime for this model.") from None
    finally:
        importer._construct_nodes = construct
    _check_outputs(mod, model, path)
    return mod


def _check_onnx_for_tvm(model, path: Path) -> None:
    """What TVM's importer reads without complaint but gets wrong: refused up front, naming the node."""
    from ..onnx_model import node_label

    for index, node in enumerate(model.graph.node):
        if node.op_type == "LayerNormalization" and any(node.output[1:]):
            used = [o for o in node.output[1:] if o]
            raise EdgekitError(f"{path}: {node_label(node, index)}: TVM's importer does not compute "
                               f"LayerNormalization's optional Mean/InvStdDev outputs ({', '.join(used)}); it "
                               "returns zeros for them, and edgekit writes the node out only for float32 inputs. Use "
                               "--backend onnxruntime, or drop those outputs from the model.")


def _expand_layernorm_stats(model):
    """TVM's importer returns zeros for LayerNormalization's optional Mean / InvStdDev outputs: where a float32
    model uses them, the node is written out as the ONNX function it is defined by (ReduceMean, Sub, Mul, Sqrt...)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import numpy as np

    wanted = [n for n in model.graph.node if n.op_type == "LayerNormalization" and any(n.output[1:])]
    if not wanted:
        return model
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type for v in list(inferred.graph.value_info) + list(inferred.graph.input)
             + list(inferred.graph.output)}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    nodes = []
    for index, node in enumerate(model.graph.node):
        t = types.get(node.input[0])
        if node not in wanted or t is None or t.elem_type != TensorProto.FLOAT or not t.HasField("shape"):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rank = len(t.shape.dim)
        axis = attrs.get("axis", -1) % rank
        axes = list(range(axis, rank))
        p = f"_ek_ln{index}_"
        x = node.input[0]

        def reduce_mean(src, dst):
            if opset >= 18:
                model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), p + "axes"))
                return helper.make_node("ReduceMean", [src, p + "axes"], [dst], keepdims=1)
            return helper.make_node("ReduceMean", [src], [dst], axes=axes, keepdims=1)

        model.graph.initializer.append(numpy_helper.from_array(np.array(attrs.get("epsilon", 1e-5), np.float32),
                                                               p + "eps"))
        mean = node.output[1] if len(node.output) > 1 and node.output[1] else p + "mean"
        inv = node.output[2] if len(node.output) > 2 and node.output[2] else p + "inv"
        y = node.output[0] or p + "y"
        nodes += [reduce_mean(x, mean), helper.make_node("Sub", [x, mean], [p + "d"]),
                  helper.make_node("Mul", [p + "d", p + "d"], [p + "dd"]), reduce_mean(p + "dd", p + "var"),
                  helper.make_node("Add", [p + "var", p + "eps"], [p + "ve"]),
                  helper.make_node("Sqrt", [p + "ve"], [p + "std"]), helper.make_node("Reciprocal", [p + "std"], [inv]),
                  helper.make_node("Mul", [p + "d", inv], [p + "n"])]
        has_bias = len(node.input) > 2 and node.input[2]
        nodes.append(helper.make_node("Mul", [p + "n", node.input[1]], [p + "s" if has_bias else y]))
        if has_bias:
            nodes.append(helper.make_node("Add", [p + "s", node.input[2]], [y]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _non_constant_operands(model, node) -> list[str]:
    """The node's shape-like operands (Split's split, Pad's pads...) that are graph inputs, not constants."""
    from ..onnx_model import CONSTANT_OPERANDS, SHAPE_OPERANDS

    inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    positions = {pos for pos, (_, kind) in SHAPE_OPERANDS.get(node.op_type, {}).items() if kind == "shape"}
    positions |= set(CONSTANT_OPERANDS.get(node.op_type, {}))
    return [f"{name!r}" for pos, name in enumerate(node.input) if pos in positions and name in inputs]


def _nodes_of(model, message: str) -> str:
    from ..onnx_model import node_label

    named = {op.strip(" .") for op in message.rpartition(":")[2].split(",")}
    hits = [node_label(n, i) for i, n in enumerate(model.graph.node) if n.op_type in named]
    return ", ".join(hits[:5]) + (" ..." if len(hits) > 5 else "") if hits else "none found"


def _check_outputs(mod, model, path: Path) -> None:
    """Each output's shape as TVM imported it against ONNX's shape inference: a mismatch is an importer bug."""
    import onnx
    from tvm import relax

    from ..onnx_model import node_label

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - the checker already ran; no inferred shapes means nothing to compare
        return
    declared = {}
    for out in inferred.graph.output:
        dims = out.type.tensor_type.shape.dim
        if out.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            declared[out.name] = [d.dim_value for d in dims]
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    producer = {o: (i, n) for i, n in enumerate(model.graph.node) for o in n.output}
    for out, info in zip(model.graph.output, fields):
        want = declared.get(out.name)
        shape = getattr(info, "shape", None)
        if want is None or shape is None or not isinstance(shape, relax.ShapeExpr):
            continue
        try:
            got = [int(v) for v in shape.values]
        except TypeError:
            continue
        if got != want:
            i, node = producer.get(out.name, (None, None))
            where = node_label(node, i) if node is not None else "the graph"
            raise EdgekitError(f"{path}: TVM's ONNX importer gives output {out.name!r} (from {where}) shape {got}; "
                               f"ONNX says {want}. Use --backend onnxruntime for this model.")


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
    database = tvm_schedule.find_database(target.name, source.name) if target_dict["kind"] == "llvm" else None
    mod, pipeline = tvm_schedule.schedule(mod, target_dict, database)
    try:
        executable = tvm.compile(mod, target=tvm.target.Target(target_dict))
    except Exception as exc:  # TVM raises its own error types from C++; surface the first line
        raise EdgekitError(f"TVM could not compile the model for {target.name}: {str(exc).splitlines()[0]}") from None
    # LLVM's debug info is a third of an int8 library and nothing at run time
    executable.export_library(str(out / entry), fcompile=link_fcompile(target_dict, _fcompile(target)),
                              options=["-Wl,--strip-debug"])
    info = {"target": target_dict, "pipeline": pipeline}
    if database is not None:  # `edgekit tune`'s records, applied before the rules
        info["tuning"] = {"database": str(database), "sha256": tvm_schedule.database_digest(database)}
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
