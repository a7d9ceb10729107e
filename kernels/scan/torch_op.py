"""`torch.ops.edgekit.selective_scan`: one graph node per scan, so each backend picks its form.

Eager runs the compiled host kernel. torch.export keeps the op whole; then
  * ExecuTorch: the op stays, as its out variant `edgekit::selective_scan.out` (defined here, so ExecuTorch's
    memory planning can give it its output buffer), run by the native kernel (native.py) the artifact ships;
  * ONNX Runtime, and ExecuTorch without a C++ compiler for the target: `decompose(exported_program)` swaps in
    the exportable chunked scan;
  * TVM: `from_exported_program(ep, custom_convert_map=relax_convert_map(target))` swaps in the
    TensorIR kernel built for that target (x86, NEON or CUDA).
"""

import torch
from torch import Tensor

from . import api, tir_scan
from .decomposed import chunked_scan


@torch.library.custom_op("edgekit::selective_scan", mutates_args=())
def selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                      z: Tensor | None = None, delta_bias: Tensor | None = None,
                      delta_softplus: bool = False) -> Tensor:
    return api.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    return torch.empty_like(u)


torch.library.define(
    "edgekit::selective_scan.out",
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D=None, Tensor? z=None, Tensor? delta_bias=None, "
    "bool delta_softplus=False, *, Tensor(a!) out) -> Tensor(a!)")


@torch.library.impl("edgekit::selective_scan.out", "CompositeExplicitAutograd")
def _selective_scan_out(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *, out):
    out.copy_(selective_scan_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus))
    return out


@torch.library.register_fake("edgekit::selective_scan.out")
def _(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *, out):
    return out


def decompose(exported_program):
    """The exported program with every edgekit scan replaced by the chunked decomposition."""
    return exported_program.run_decompositions({torch.ops.edgekit.selective_scan.default: chunked_scan})


_ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus")


def relax_convert_map(target: dict) -> dict:
    """custom_convert_map for TVM's from_exported_program: the scan becomes an R.call_tir."""
    from tvm import relax

    def convert(node, importer):
        given = {**dict(zip(_ARG_NAMES, node.args)), **node.kwargs}
        u, delta, A, B, C, D, z, delta_bias = (
            None if given.get(name) is None else importer.env[given[name]] for name in _ARG_NAMES[:8])
        softplus = bool(given.get("delta_softplus", False))
        batch, dim, _ = u.ty.shape
        n_state = int(A.ty.shape[1])
        if n_state & (n_state - 1):
            raise ValueError(f"the TVM scan kernel needs a power-of-two state size, got {n_state}.")
        opts = tir_scan.Options(n_state, has_d=D is not None, has_z=z is not None,
                                has_bias=delta_bias is not None, softplus=softplus)
        func = tir_scan.build_scan(opts, tir_scan.schedule_for(target["kind"]))
        # Already scheduled: GPU pipelines (DLight) must leave its thread bindings alone.
        func = func.without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
        bb = importer.block_builder
        kernel = bb.add_func(func, "edgekit_selective_scan")
        b_mat, c_mat = (t if t.ty.ndim == 4 else bb.emit(relax.op.expand_dims(t, 1)) for t in (B, C))
        args = [u, delta, A, b_mat, c_mat, *(t for t in (D, z, delta_bias) if t is not None)]
        outputs = bb.emit(relax.call_tir(kernel, args, [
            relax.TensorType(u.ty.shape, "float32"),
            relax.TensorType((batch, dim, n_state), "float32")]))
        return bb.emit(relax.TupleGetItem(outputs, 0))

    return {"selective_scan.default": convert}
