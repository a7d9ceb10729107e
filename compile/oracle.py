"""The float64 oracle: the reference evaluated in double precision, and the rule that tells float rounding from a bug.

An artifact's output is judged against the float64 evaluation of the same reference graph. Float32 evaluation is
itself off by the rounding its conditioning allows; the float32 reference's own error against float64 measures
that. The artifact passes an output when

    max|artifact - float64| <= FACTOR * max|reference32 - float64| + ULPS * eps32 * max|float64|

FACTOR = 8: backends reorder sums (blocked GEMM, Winograd, tree reductions, fused multiply-add), which changes the
rounding of every accumulation; the error bound of a length-n sum grows with the depth of its summation tree, and
measured backends land within 1-4x of the eager reference's own error. 8 leaves a margin above that while a wrong
weight, padding or layout (errors of the size of the values themselves) stays orders of magnitude beyond it.
ULPS = 4 ulps of the output's magnitude, counted as at least 1.0: where the float32 reference happens to round
exactly (error 0, e.g. a copy or a ReLU), a kernel that computes the same value through one or two more rounded steps
is still correct; and outputs far below 1 (probabilities) are judged on the scale of 1, because kernels legitimately
flush them (ONNX Runtime's sigmoid returns 0 for sigmoid(-19.2) = 4.4e-9, exact to float32 rounding of 1 - p).
"""
from __future__ import annotations

import copy

import numpy as np

FACTOR = 8.0
ULPS = 4
EPS32 = float(np.finfo(np.float32).eps)
RULE = (f"max|artifact - float64| <= {FACTOR:g} * max|float32 reference - float64| + {ULPS} ulp(float32) * "
        "max(max|float64|, 1)")


def float64_outputs(model, inputs: list[np.ndarray]) -> tuple[list[np.ndarray] | None, str | None]:
    """The reference in float64: a torch module (eager, or the TFLite importer's) in double on double inputs, or
    an .onnx graph with every float32 tensor made float64. (None, why) when the model cannot run in float64."""
    from .source import TorchSource

    try:
        if isinstance(model, TorchSource):
            import torch

            return _torch_float64(model.module, [torch.from_numpy(np.array(x)) for x in inputs]), None
        if model.kind == "onnx":
            return _onnx_float64(model.path, inputs), None
    except Exception as exc:  # noqa: BLE001 - any op without a float64 kernel means "no oracle", never a failure
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        return None, f"the reference cannot run in float64 ({type(exc).__name__}: {text})"
    return None, f"no float64 evaluation for .{model.kind} models"


def _torch_float64(module, example_inputs) -> list[np.ndarray]:
    import torch

    double = copy.deepcopy(module).double()
    args = [t.double() if t.is_floating_point() else t for t in example_inputs]
    with torch.no_grad():
        out = double(*args)
    return [t.detach().numpy() for t in flatten(out)]


def flatten(out):
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for item in out for t in flatten(item)]


def _onnx_float64(path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The graph with float32 initializers, constants, casts and value types made float64: ONNX Runtime where it has
    double kernels for every op, else ONNX's reference evaluator (numpy, always float64-capable)."""
    import onnx

    model = onnx.load(str(path))
    to_double(model.graph)
    feeds = [x.astype(np.float64) if x.dtype == np.float32 else x for x in inputs]
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return list(session.run(None, dict(zip(names, feeds))))
    except Exception:  # noqa: BLE001 - ORT lacks double kernels for some ops (Conv): the numpy evaluator has them
        from onnx.reference import ReferenceEvaluator

        return list(ReferenceEvaluator(model).run(None, dict(zip(names, feeds))))


def to_double(graph) -> None:
    """Every float32 in an ONNX graph (types, initializers, Constant/ConstantOfShape values, Cast targets) -> float64,
    recursing into subgraphs."""
    from onnx import TensorProto, numpy_helper

    F, D = TensorProto.FLOAT, TensorProto.DOUBLE

    def fix_tensor(t):
        if t.data_type == F:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))

    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.tensor_type.elem_type == F:
            vi.type.tensor_type.elem_type = D
    for t in graph.initializer:
        fix_tensor(t)
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == F:
                attr.i = D
            if attr.HasField("t"):
                fix_tensor(attr.t)
            if attr.HasField("g"):
                to_double(attr.g)
            for g in attr.graphs:
                to_double(g)


def judge(got: np.ndarray, ref32: np.ndarray, ref64: np.ndarray) -> dict:
    """One output (or intermediate) under the float64 rule: the artifact's and the float32 reference's max error
    against float64, the bound, and whether the artifact is within it."""
    g64 = ref64.astype(np.float64)
    art = _max_err(got, g64)
    ref = _max_err(ref32, g64)
    finite = np.abs(g64[np.isfinite(g64)])
    magnitude = max(float(finite.max(initial=0.0)), 1.0)
    bound = FACTOR * ref + ULPS * EPS32 * magnitude
    return {"err_vs_float64": art, "reference_err_vs_float64": ref, "bound": bound, "ok": bool(art <= bound),
            "mean_err_vs_float64": _mean_err(got, g64)}


def _abs_err(a: np.ndarray, b64: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    err = np.abs(a - b64)
    err[(a == b64) | (np.isnan(a) & np.isnan(b64))] = 0.0  # equal infinities and NaNs in the same places agree
    err[np.isnan(err)] = np.inf
    return err


def _max_err(a: np.ndarray, b64: np.ndarray) -> float:
    return float(_abs_err(a, b64).max(initial=0.0))


def _mean_err(a: np.ndarray, b64: np.ndarray) -> float:
    err = _abs_err(a, b64)
    return float(err.mean()) if err.size else 0.0


def sqnr_db(got: np.ndarray, reference: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of `got` against `reference`, in dB (inf when identical)."""
    r = reference.astype(np.float64)
    noise = float(np.sum((got.astype(np.float64) - r) ** 2))
    signal = float(np.sum(r ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(signal / noise)) if signal > 0 else float("-inf")
