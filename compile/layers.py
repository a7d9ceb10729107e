"""Layer-by-layer numerics: every compute op of the exported graph, evaluated by the reference (float32 and float64
eager) and by a debug build of the backend, judged with the float64 rule of compile/oracle.py.

The debug build: the torch.export graph of the model, rewritten so that every compute op's output is also a graph
output (a "tapped" graph), lowered by the same backend, target, quantization and lowering code as the artifact.
Each backend then hands back the op's value where it computed it (ONNX Runtime: a graph output per tapped tensor;
ExecuTorch: an XNNPACK-delegated program returning each tapped value; TVM: a relax VM function returning them), so
the rows are matched to the reference by position in the graph, not by guessing at backend-specific names.
Quantized builds tap layers instead (tap_modules: leaf nn.Modules, which the quantizers must still see) and report
each layer's SQNR against fp32 eager. The debug build itself is compiled by edgekit/inspect.py (above compile).
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import numpy as np

from edgekit.errors import EdgekitError

from . import oracle

# data movement only: their values are their input's, so they are left out of the table (their errors show in the
# next op that computes)
MOVES = {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "squeeze", "unsqueeze", "slice",
         "select", "clone", "alias", "contiguous", "_to_copy", "detach", "flatten", "unflatten", "getitem",
         "lift_fresh_copy", "split", "split_with_sizes", "chunk", "unbind"}


@dataclass
class Tapped:
    module: object            # torch.fx.GraphModule returning every tapped value, in graph order
    names: list[str]          # the FX node name of each output
    ops: list[str]            # the aten op
    modules: list[str]        # the nn.Module path the op came from ("" for the top module)


def tap(module, example_inputs, name: str = "model") -> Tapped:
    """The model's exported graph with every compute op's float output as a graph output."""
    import torch

    from .export import export_torch
    from .source import TorchSource

    program = export_torch(TorchSource(module, tuple(example_inputs), name))
    gm = program.module()
    nodes = [n for n in gm.graph.nodes if _is_compute(n)]
    if not nodes:
        raise EdgekitError(f"{name}: its exported graph has no compute ops to inspect.")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(out):
        gm.graph.output(tuple(nodes))
    gm.graph.erase_node(out)
    for node in [n for n in gm.graph.nodes if n.op == "call_module" and not n.users]:
        gm.graph.erase_node(node)  # export's input guards: the debug build runs the example inputs only
    gm.graph._codegen = torch.fx.graph.CodeGen()  # plain positional inputs, a flat tuple out
    gm = torch.fx.GraphModule(gm, gm.graph)  # a plain GraphModule (export's own refuses eval())
    return Tapped(gm, [n.name for n in nodes], [_op_name(n) for n in nodes], [_module_path(n) for n in nodes])


def tap_modules(module, example_inputs) -> Tapped:
    """For quantized builds: the model itself (its layers stay nn.Modules, as the quantizers need them) returning
    every leaf module's float output, in call order: rows per layer rather than per aten op."""
    import torch

    wrapper = layer_taps(module)
    with torch.no_grad():
        wrapper(*example_inputs)
    if not wrapper.order:
        raise EdgekitError("inspect: the model has no layers (leaf modules) with float outputs to inspect.")
    names = [f"{n}#{k}" if k else n for n, k in wrapper.order]
    kinds = [type(module.get_submodule(n)).__name__ for n, _ in wrapper.order]
    return Tapped(wrapper, names, kinds, [f"{n} ({kind})" for (n, _), kind in zip(wrapper.order, kinds)])


def layer_taps(module, names: list[str] | None = None):
    """An nn.Module running `module` and returning every leaf module's float output, or those of the modules
    `names` (hooks live only during a call, so copies of it, e.g. in float64, capture their own values)."""
    import torch

    class LayerTaps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module
            self.order: list[tuple[str, int]] = []

        def forward(self, *inputs):
            seen = []
            leaves = ([(n, self.inner.get_submodule(n)) for n in names] if names is not None else
                      [(n, m) for n, m in self.inner.named_modules() if n and not list(m.children())])
            handles = [m.register_forward_hook(_keep(seen, n)) for n, m in leaves]
            try:
                self.inner(*inputs)
            finally:
                for h in handles:
                    h.remove()
            calls: dict[str, int] = {}
            self.order = []
            for name, _ in seen:
                self.order.append((name, calls.get(name, 0)))
                calls[name] = calls.get(name, 0) + 1
            return tuple(t for _, t in seen)

    return LayerTaps()


def _keep(seen: list, name: str):
    def hook(_module, _inputs, output):
        if hasattr(output, "dtype") and output.dtype.is_floating_point:
            seen.append((name, output))
    return hook


def _is_compute(node) -> bool:
    val = node.meta.get("val")
    return (node.op == "call_function" and hasattr(val, "dtype") and val.dtype.is_floating_point
            and _op_name(node) not in MOVES)


def _op_name(node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, kind = list(stack.values())[-1]
    kind = kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", "")
    return f"{path} ({kind})" if path else ""


def reference_values(tapped: Tapped, module, example_inputs) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Every tapped value in float32 eager, and in float64 (None where the graph cannot run in float64)."""
    import torch

    with torch.no_grad():
        ref32 = [t.detach().numpy() for t in tapped.module(*example_inputs)]
        try:
            double = copy.deepcopy(tapped.module).double()
            args = [t.double() if t.is_floating_point() else t for t in example_inputs]
            ref64 = [t.detach().numpy() for t in double(*args)]
        except Exception:  # noqa: BLE001 - a float32 constant baked into the graph: export the model in double
            ref64 = _by_name(tapped, module, example_inputs)
    return ref32, ref64


def _by_name(tapped: Tapped, module, example_inputs) -> list[np.ndarray] | None:
    """float64 values from the model exported in double, matched to the float32 graph's ops by node name."""
    import torch

    double = copy.deepcopy(module).double()
    args = [t.double() if t.is_floating_point() else t for t in example_inputs]
    try:
        other = tap(double, args)
        with torch.no_grad():
            values = dict(zip(other.names, (t.detach().numpy() for t in other.module(*args))))
    except Exception:  # noqa: BLE001 - the model has ops without float64 kernels: no float64 column
        return None
    if not all(n in values for n in tapped.names):
        return None
    return [values[n] for n in tapped.names]


# tests only: a function(torch module) -> None applied to a copy of the module about to be lowered, to stand for a
# lowering that computes something wrong (see lowering_hook)
_HOOK = None


@contextlib.contextmanager
def lowering_hook(fn):
    """Within the block, every lowering first applies fn to a copy of the torch module (tests break a lowering with
    it: a perturbed weight, a flipped padding)."""
    global _HOOK
    previous, _HOOK = _HOOK, fn
    try:
        yield
    finally:
        _HOOK = previous


def hooked(source):
    """The source as the lowering sees it: unchanged, unless a test installed a lowering hook."""
    if _HOOK is None or not hasattr(source, "module"):
        return source
    module = copy.deepcopy(source.module)
    _HOOK(module)
    return type(source)(module, source.example_inputs, source.name, source.inputs_record)


def table(tapped: Tapped, got: list[np.ndarray], ref32: list[np.ndarray], ref64: list[np.ndarray] | None,
          quantized: bool) -> list[dict]:
    """One row per op in graph order: errors against float64 and float32 eager (SQNR for quantized builds), and
    whether the error is within float rounding (the float64 rule)."""
    rows = []
    for i, (name, op, module) in enumerate(zip(tapped.names, tapped.ops, tapped.modules)):
        g, r32 = got[i], ref32[i]
        if g.shape != r32.shape:
            raise EdgekitError(f"inspect: op {name} ({op}) has shape {list(g.shape)} in the debug build, "
                               f"{list(r32.shape)} in the reference.")
        err = np.abs(g.astype(np.float64) - r32.astype(np.float64))
        row = {"index": i, "name": name, "op": op, "module": module, "shape": list(g.shape),
               "max_err_vs_fp32": float(np.nanmax(err, initial=0.0)),
               "mean_err_vs_fp32": float(err.mean()) if err.size else 0.0}
        if ref64 is not None:
            judged = oracle.judge(g, r32, ref64[i])
            row.update(max_err_vs_float64=judged["err_vs_float64"], mean_err_vs_float64=judged["mean_err_vs_float64"],
                       reference_err_vs_float64=judged["reference_err_vs_float64"], bound=judged["bound"],
                       within_rounding=judged["ok"])
        else:
            bound = oracle.ULPS * oracle.EPS32 * float(np.abs(r32).max(initial=0.0))
            row.update(bound=bound, within_rounding=bool(row["max_err_vs_fp32"] <= bound))
        if quantized:
            row["sqnr_db"] = oracle.sqnr_db(g, r32)
        rows.append(row)
    return rows


def first_divergent(rows: list[dict]) -> dict | None:
    return next((r for r in rows if not r["within_rounding"]), None)


def format_table(report: dict, limit: int | None = None) -> str:
    """The rows as text; `limit`: only the worst rows (largest error, or lowest SQNR when quantized)."""
    rows = report["rows"]
    quantized = any("sqnr_db" in r for r in rows)
    if limit is not None:
        key = (lambda r: r["sqnr_db"]) if quantized else (lambda r: -r.get("max_err_vs_float64",
                                                                           r["max_err_vs_fp32"]))
        rows = sorted(sorted(rows, key=key)[:limit], key=lambda r: r["index"])
    head = f"{'#':>4}  {'op':<28} {'module':<28} {'max|d64|':>9} {'mean|d64|':>9} {'max|d32|':>9} {'bound':>9}"
    head += f" {'SQNR dB':>8}" if quantized else ""
    lines = [head]
    cell = _cell
    for r in rows:
        line = (f"{r['index']:>4}  {r['name'][:28]:<28} {r['module'][:28]:<28} "
                f"{cell(r.get('max_err_vs_float64', math.nan))} {cell(r.get('mean_err_vs_float64', math.nan))} "
                f"{cell(r['max_err_vs_fp32'])} {cell(r['bound'])}")
        line += f" {r['sqnr_db']:>8.1f}" if quantized else ""
        if r["name"] == report.get("first_divergent"):
            line += "  <- first beyond float rounding"
        lines.append(line)
    return "\n".join(lines)


def _cell(value: float) -> str:
    return f"{'-':>9}" if math.isnan(value) else f"{value:>9.3g}"


def simulated_table(fp32_module, quantized_module, inputs, limit: int = 8) -> str:
    """The inspect table (per-layer SQNR against fp32 eager) of a quantized torch module (the gate's fake-quant
    simulation) on one sample, worst layers only; "" when its layers do not line up with the float model's."""
    import torch

    ref = layer_taps(fp32_module)
    with torch.no_grad():
        r32 = ref(*inputs)
        sim = layer_taps(quantized_module, list(dict.fromkeys(n for n, _ in ref.order)))
        try:
            got = sim(*inputs)
        except AttributeError:  # the simulation renamed a layer: no table rather than a wrong one
            return ""
    if ref.order != sim.order:
        return ""
    names = [f"{n}#{k}" if k else n for n, k in ref.order]
    kinds = [type(fp32_module.get_submodule(n)).__name__ for n, _ in ref.order]
    tapped = Tapped(ref, names, kinds, [f"{n} ({kind})" for (n, _), kind in zip(ref.order, kinds)])
    rows = table(tapped, [t.numpy() for t in got], [t.numpy() for t in r32], None, quantized=True)
    return format_table({"rows": rows, "first_divergent": None}, limit=limit)
