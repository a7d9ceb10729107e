"""`edgekit coverage`: ONNX's own node test cases, generated from the installed onnx package's case definitions
(onnx.backend.test.case.node), each compiled through edgekit for a target with the case's inputs as example inputs,
then run and compared with the case's expected outputs. Per op: compiled / correct / refused (with the message).

A case is "compiled" when edgekit wrote an artifact (its own verify step against ONNX Runtime passed), "correct"
when the artifact's outputs also match the case's expected outputs, "refused" when edgekit stopped with a message
(EdgekitError), "crashed" when anything else escaped (a traceback: a bug in edgekit)."""
from __future__ import annotations

import json
import re
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

# The common-op sample: one or a few cases per op most models use, including the cases the issue (#29) found
# failing (inputs that set shapes, axes or indices; scales < 1; zero-size outputs; non-constant operands).
COMMON = (
    "abs add and2d argmax_default_axis_example attention_3d averagepool_2d_default batchnorm_example "
    "cast_FLOAT_to_FLOAT16 ceil clip clip_splitbounds concat_2d_axis_0 constantofshape_float_ones "
    "conv_with_strides_padding convtranspose cos cumsum_1d depthtospace_crd_mode div einsum_batch_matmul elu equal "
    "erf exp expand_dim_changed expand_dim_unchanged flatten_axis1 floor gather_0 gather_negative_indices "
    "gather_elements_0 gathernd_example_float32 gelu_default_1 gemm_default_no_bias globalaveragepool globalmaxpool "
    "greater hardsigmoid hardswish identity instancenorm_example layer_normalization_2d_axis0 "
    "layer_normalization_default_axis leakyrelu less log logsoftmax_axis_1 lrn matmul_2d max_example "
    "maxpool_2d_default mean_example min_example mod_mixed_sign_float32 mul neg not_2d onehot_with_axis "
    "constant_pad reflect_pad pow prelu_example range_float_type_positive_delta reciprocal "
    "reduce_max_default_axes_keepdim_example reduce_mean_default_axes_keepdims_example "
    "reduce_sum_default_axes_keepdims_example reduce_sum_keepdims_example reduce_sum_empty_set relu "
    "reshape_reordered_all_dims reshape_negative_dim resize_upsample_scales_nearest resize_downsample_scales_nearest "
    "resize_downsample_scales_linear resize_upsample_sizes_nearest round scatternd selu shape sigmoid sign sin slice "
    "slice_neg_steps softmax_axis_1 softplus spacetodepth split_equal_parts_1d_opset18 "
    "split_variable_parts_1d_opset18 split_zero_size_splits_opset18 sqrt squeeze sub sum_two_inputs tanh tile "
    "top_k transpose_default tril unsqueeze_axis_0 where_example"
).split()

ATOL, RTOL = 1e-5, 1e-3  # ONNX's backend tests use rtol 1e-3; atol 1e-5 for float32 kernels that round differently


def node_cases():
    """ONNX's node test cases (name -> TestCase), without the function-expanded variants."""
    import warnings

    from onnx.backend.test.case import node

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    return {c.name: c for c in cases if "_expanded" not in c.name}


def select(pattern: str | None = None, every: bool = False) -> list:
    cases = node_cases()
    names = sorted(cases) if every else [f"test_{n}" for n in COMMON if f"test_{n}" in cases]
    if pattern:
        rx = re.compile(pattern)
        names = [n for n in names if rx.search(n)]
    return [cases[n] for n in names]


def run_case(case, backend: str, target: str, work: Path) -> dict:
    import onnx

    import edgekit
    from edgekit.compile import compile_model

    model = case.model
    op = model.graph.node[0].op_type if len(model.graph.node) == 1 else "+".join(
        sorted({n.op_type for n in model.graph.node}))
    row = {"case": case.name, "op": op, "status": None, "message": None}
    inputs, expected = (_arrays(xs) for xs in case.data_sets[0])
    initializers = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    path = work / f"{case.name}.onnx"
    onnx.save(model, str(path))
    start = time.perf_counter()
    try:
        example = {n: _as_declared(np.asarray(x), model, n) for n, x in zip(names, inputs)}
        out = compile_model(path, example, target=target, backend=backend, output=work / case.name, force=True,
                            atol=ATOL, rtol=RTOL)
        row["status"] = "compiled"
        art = edgekit.load(out, trust=False)
        folded = set(art.manifest.const_inputs or {})
        got = art.run([example[n] for n in names if n not in folded])
        row["mismatch"] = _mismatch(got, expected)
        row["status"] = "correct" if row["mismatch"] is None else "compiled"
        row["folded_inputs"] = sorted(folded)
    except EdgekitError as exc:
        row["status"], row["message"] = "refused", str(exc).replace(str(work) + "/", "")
        row["names_node_and_op"] = _names_node(row["message"], model)
    except Exception as exc:  # noqa: BLE001 - counted: every such case is a bug to fix
        row["status"] = "crashed" if row["status"] is None else "compiled"
        row["message"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc()[-3000:]
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _arrays(values) -> list[np.ndarray]:
    """A case's inputs or outputs as arrays (some cases, e.g. Cast's, hold TensorProtos)."""
    import onnx
    from onnx import numpy_helper

    return [numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else np.asarray(v) for v in values]


def _as_declared(x: np.ndarray, model, name: str) -> np.ndarray:
    """Some cases hold their inputs as object arrays (e.g. Cast's, as strings): the declared dtype instead."""
    from onnx import helper

    if not x.dtype.hasobject:
        return x
    inp = next(i for i in model.graph.input if i.name == name)
    return x.astype(helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type))


def _mismatch(got: list[np.ndarray], expected) -> str | None:
    if len(got) != len(expected):
        return f"{len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        e = np.asarray(e)
        if g.shape != e.shape:
            return f"output {i}: shape {list(g.shape)}, expected {list(e.shape)}"
        if e.dtype.kind in "fc":
            ok = np.isclose(g.astype(np.float64), e.astype(np.float64), rtol=RTOL, atol=ATOL, equal_nan=True)
        else:
            ok = g == e
        if not np.all(ok):
            err = float(np.max(np.abs(g.astype(np.float64) - e.astype(np.float64)), initial=0.0))
            return f"output {i}: {int((~ok).sum())} of {ok.size} elements differ (max abs err {err:.3g})"
    return None


def _names_node(message: str, model) -> bool:
    """Does the refusal name a node (by name or #index, or the input it reads) and its op?"""
    ops = {n.op_type for n in model.graph.node}
    has_op = any(op in message for op in ops)
    has_node = any((n.name and repr(n.name) in message) or f"#{i}" in message for i, n in enumerate(model.graph.node))
    return has_op and has_node


def run_coverage(backend: str, target: str = "host", pattern: str | None = None, every: bool = False,
                 report_dir: Path | None = Path("reports"), progress: bool = False) -> dict:
    from edgekit import backends
    from edgekit.targets import get_target

    backends.check(get_target(target), backend)
    cases = select(pattern, every)
    if not cases:
        raise EdgekitError(f"coverage: no ONNX node test matches {pattern!r}.")
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-coverage-") as tmp:
        for i, case in enumerate(cases):
            row = run_case(case, backend, target, Path(tmp))
            rows.append(row)
            if progress:
                print(f"[{i + 1}/{len(cases)}] {case.name}: {row['status']}", flush=True)
    report = summarize(rows, backend, target)
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        js, md = report_dir / f"coverage-{backend}.json", report_dir / f"coverage-{backend}.md"
        report["files"] = [str(js), str(md)]
        report["markdown"] = markdown(report)
        js.write_text(json.dumps({k: v for k, v in report.items() if k != "markdown"}, indent=2))
        md.write_text(report["markdown"])
    else:
        report["markdown"] = markdown(report)
    return report


def summarize(rows: list[dict], backend: str, target: str) -> dict:
    import onnx

    ops: dict[str, dict] = {}
    for r in rows:
        o = ops.setdefault(r["op"], {"cases": 0, "compiled": 0, "correct": 0, "refused": 0, "crashed": 0})
        o["cases"] += 1
        o["compiled"] += r["status"] in ("compiled", "correct")
        o["correct"] += r["status"] == "correct"
        o["refused"] += r["status"] == "refused"
        o["crashed"] += r["status"] == "crashed"
    n = len(rows)
    totals = {k: sum(o[k] for o in ops.values()) for k in ("cases", "compiled", "correct", "refused", "crashed")}
    totals["compiled_pct"] = round(100 * totals["compiled"] / n, 1)
    totals["correct_pct"] = round(100 * totals["correct"] / n, 1)
    refusals = [r for r in rows if r["status"] == "refused"]
    totals["refusals_naming_node_and_op"] = sum(bool(r.get("names_node_and_op")) for r in refusals)
    return {"backend": backend, "target": target, "onnx": onnx.__version__, "atol": ATOL, "rtol": RTOL,
            "totals": totals, "ops": ops, "cases": rows}


def markdown(report: dict) -> str:
    t = report["totals"]
    lines = [f"# ONNX node-test coverage: {report['backend']} for {report['target']}", "",
             f"onnx {report['onnx']}; {t['cases']} cases: **{t['compiled']} compiled ({t['compiled_pct']}%), "
             f"{t['correct']} correct ({t['correct_pct']}%)**, {t['refused']} refused "
             f"({t['refusals_naming_node_and_op']} naming node and op), {t['crashed']} crashed. Correct: matches the "
             f"case's expected outputs within rtol {report['rtol']:g}, atol {report['atol']:g}.", "",
             "| op | cases | compiled | correct | refused | crashed |", "|---|---|---|---|---|---|"]
    for op, o in sorted(report["ops"].items()):
        lines.append(f"| {op} | {o['cases']} | {o['compiled']} | {o['correct']} | {o['refused']} | {o['crashed']} |")
    other = [r for r in report["cases"] if r["status"] != "correct"]
    if other:
        lines += ["", "| case | status | message |", "|---|---|---|"]
        for r in other:
            msg = (r.get("message") or r.get("mismatch") or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r['case']} | {r['status']} | {msg[:600]} |")
    return "\n".join(lines) + "\n"
