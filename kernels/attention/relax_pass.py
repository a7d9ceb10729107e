"""Relax rewrite: run attention in a compiled model through the edgekit flash-attention kernel.

    mod = use_fused_attention(mod, target)          # before tvm.compile(mod, target)
    exe.export_library(path, fcompile=link_fcompile(target, fcompile))

Rewrites float32/float16 `R.nn.attention` calls without bias or window (what the torch frontend emits for
scaled_dot_product_attention when the export is not decomposed) and the plain
`matmul(softmax(matmul(q, permute_dims(k)) * scale), v)` chain on [B, H, L, D] tensors (ONNX
graphs, hand-written attention). Each becomes an R.call_tir to the kernel for the target: the
AVX-512 micro-kernel driver on x86 hosts that have it (float32), the portable TIR elsewhere. Modules that
use the micro-kernel must be linked with `link_fcompile`.
"""

import math

import tvm
import tvm.sym
from tvm import relax

from . import build, tir_kernel

ATTENTION_OP = tvm.ir.Op.get("relax.nn.attention")


def uses_microkernel(target: dict) -> bool:
    """The x86 micro-kernel runs only where this host compiles for itself and has AVX-512."""
    return target["kind"] == "llvm" and "mtriple" not in target and build.host_has_avx512()


def link_fcompile(target: dict, fcompile=None):
    """The export_library fcompile that links the micro-kernel when `target` uses it."""
    return build.microkernel_fcompile(fcompile or "g++") if uses_microkernel(target) else fcompile


def _kernel(target: dict, head_dim: int, causal: bool, scale: float, dtype: str) -> tvm.tirx.PrimFunc:
    if uses_microkernel(target) and head_dim % build.HEAD_DIM_STEP == 0 and dtype == "float32":
        func = tir_kernel.tile_driver
    else:
        func = tir_kernel.portable_kernel(head_dim, "cuda" if target["kind"] == "cuda" else "cpu", dtype)
    causal_var, window_var, scale_var = func.params[4:]
    func = func.specialize({causal_var: int(causal), window_var: 0, scale_var: tvm.tirx.FloatImm("float32", scale)})
    # Each call site gets its own function, named by the block builder; already scheduled, so
    # GPU pipelines (DLight) leave its thread bindings alone.
    return func.without_attr("global_symbol").with_attr("tirx.is_scheduled", True)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod, target):
        super().__init__(mod)
        self.target = target

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        fused = self._from_attention_op(call) if call.op == ATTENTION_OP else self._from_matmul_chain(call)
        return call if fused is None else fused

    def _from_attention_op(self, call):
        q, k, v = call.args[:3]
        attrs = call.attrs
        if len(call.args) > 3 or attrs.window_size is not None or _supported(q, k, v, heads_axis=2) is None:
            return None
        (_, lq, _, d), lk = q.ty.shape, k.ty.shape[1]
        same_length = tvm.sym.Analyzer().can_prove_equal(lq, lk)
        if attrs.causal_mask == "TopLeft" and not same_length:  # our mask is bottom-right aligned
            return None
        scale = attrs.scale.value if attrs.scale is not None else None
        to_bhld = [0, 2, 1, 3]
        q, k, v = (self.builder_.emit(relax.op.permute_dims(x, to_bhld)) for x in (q, k, v))
        return relax.op.permute_dims(self._call_kernel(q, k, v, attrs.causal_mask is not None, scale), to_bhld)

    def _from_matmul_chain(self, call):
        """matmul(softmax(matmul(q, permute_dims(k, [0, 1, 3, 2])) * c or / c, axis=-1), v)."""
        if not _is_op(call, "relax.matmul"):
            return None
        softmax = self._producer(call.args[0], "relax.nn.softmax")
        if softmax is None or int(softmax.attrs.axis) not in (-1, 3):
            return None
        scaled = self._producer(softmax.args[0])
        if scaled is None or not (_is_op(scaled, "relax.multiply") or _is_op(scaled, "relax.divide")):
            return None
        scores, factor = scaled.args
        if _is_op(scaled, "relax.multiply") and isinstance(scores, tvm.ir.GenericConst):
            scores, factor = factor, scores
        if not isinstance(factor, tvm.ir.GenericConst) or factor.value.numpy().size != 1:
            return None
        scores = self._producer(scores, "relax.matmul")
        k_t = None if scores is None else self._producer(scores.args[1], "relax.permute_dims")
        if k_t is None or k_t.attrs.axes is None or [int(a) for a in k_t.attrs.axes] != [0, 1, 3, 2]:
            return None
        q, k, v = scores.args[0], k_t.args[0], call.args[1]
        if _supported(q, k, v, heads_axis=1) is None:
            return None
        c = float(factor.value.numpy())
        return self._call_kernel(q, k, v, False, c if _is_op(scaled, "relax.multiply") else 1 / c)

    def _producer(self, expr, op_name=None):
        """The call bound to `expr` (a dataflow var), if it is one (of op `op_name`)."""
        bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
        if isinstance(bound, relax.Call) and (op_name is None or _is_op(bound, op_name)):
            return bound
        return None

    def _call_kernel(self, q, k, v, causal, scale):
        """call_tir to the kernel on [B, H, L, D] tensors that passed `_supported`."""
        shape, dtype = q.ty.shape, _supported(q, k, v, heads_axis=1)
        d = shape[3].value
        scale = 1 / math.sqrt(d) if scale is None else scale
        gv = self.builder_.add_func(_kernel(self.target, d, causal, scale, dtype), "edgekit_attention")
        return relax.call_tir(gv, [q, k, v], relax.TensorType(shape, dtype))


def _is_op(call, op_name: str) -> bool:
    return isinstance(call, relax.Call) and call.op == tvm.ir.Op.get(op_name)


def _supported(q, k, v, heads_axis: int) -> str | None:
    """The dtype of q, k, v when the kernel handles them, else None: 4-D float32 or float16 tensors
    of one dtype, a static head dim up to 256, and static head counts with q's a multiple of k's."""
    types = [t.ty for t in (q, k, v)]
    if not all(isinstance(ty, relax.TensorType) and ty.ndim == 4 and ty.shape is not None for ty in types):
        return None
    dtypes = {str(ty.dtype) for ty in types}
    head_dim, q_heads, kv_heads = types[0].shape[3], types[0].shape[heads_axis], types[1].shape[heads_axis]
    if not all(isinstance(x, tvm.tirx.IntImm) for x in (head_dim, q_heads, kv_heads)):
        return None
    if len(dtypes) != 1 or not dtypes <= set(tir_kernel.SYMBOLS):
        return None
    if head_dim.value > 256 or q_heads.value % kv_heads.value:
        return None
    return dtypes.pop()


def use_fused_attention(mod: tvm.IRModule, target: dict) -> tvm.IRModule:
    """Return `mod` with attention in its relax functions replaced by the edgekit kernel for `target`."""
    rewriter = _Rewriter(mod, target)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get())
