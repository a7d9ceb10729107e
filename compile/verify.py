"""Run the staged artifact through the runtimes and compare with the reference outputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtimes.model import has_cuda, load
from edgekit.targets import host_arch

from . import oracle
from .oracle import flatten


def reference_outputs(source, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The oracle: eager PyTorch for torch models, ONNX Runtime for .onnx, the TFLite runtime for .tflite."""
    from .source import TorchSource

    if isinstance(source, TorchSource):
        import torch

        with torch.no_grad():
            out = source.module(*(torch.from_numpy(np.array(x)) for x in inputs))
        return [t.detach().numpy() for t in flatten(out)]
    if source.kind == "onnx":
        return _onnx_reference(source, inputs)
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(source.path))
    interp.allocate_tensors()
    for detail, x in zip(interp.get_input_details(), inputs):
        interp.set_tensor(detail["index"], x)
    interp.invoke()
    return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]


def _onnx_reference(source, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """ONNX Runtime on the model file; its failures name the node and op, and say what to try."""
    import onnxruntime as ort

    from .onnx_model import load, ort_message

    try:
        session = ort.InferenceSession(str(source.path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT's Fail/InvalidGraph/NotImplemented all mean the same here
        raise EdgekitError(f"{source.path}: ONNX Runtime (the reference) cannot load the model: "
                           f"{ort_message(exc, load(source.path))}. Check the model's opset and custom ops "
                           "(onnx.checker), or re-export it.") from None
    try:
        return list(session.run(None, {i.name: x for i, x in zip(session.get_inputs(), inputs)}))
    except Exception as exc:  # noqa: BLE001
        given = ", ".join(f"{i.name}={x.dtype.name}{list(x.shape)}" for i, x in zip(session.get_inputs(), inputs))
        raise EdgekitError(f"{source.path}: ONNX Runtime (the reference) fails on the example inputs at "
                           f"{ort_message(exc, load(source.path))} (inputs {given}). Inputs that set shapes, sizes, "
                           "axes or indices need real values: pass --example-inputs FILE.npz, or fold them with "
                           "--const-inputs NAME=FILE.npy.") from None


DEFAULT_ATOL = DEFAULT_RTOL = 1e-4  # the fixed rule, where the reference has no float64 evaluation


def verify(artifact_dir: Path, inputs: list[np.ndarray], expected: list[np.ndarray],
           atol: float | None = None, rtol: float | None = None, enforce: bool = True,
           reference64: list[np.ndarray] | None = None, no_float64: str | None = None) -> dict:
    """Run the artifact and judge each output. With atol/rtol given: the fixed rule atol + rtol*|expected|. Without:
    the float64 rule of compile/oracle.py against `reference64`, or the fixed default rule where the reference has
    no float64 evaluation (`no_float64` says why). With `enforce`, raises a readable report on failure."""
    from edgekit.artifact import read_manifest

    manifest = read_manifest(artifact_dir)
    device = manifest.backend_info.get("device_code")
    if device and not has_cuda():
        return {"status": "not-run", "reason": f"needs a CUDA GPU ({device['arch']}); none on this machine",
                "where": None}
    where = "emulator (qemu-aarch64)" if manifest.arch != host_arch() else "host"
    got = _run(artifact_dir, manifest.backend, where, inputs)
    if len(got) != len(expected):
        raise EdgekitError(f"verify: the artifact returned {len(got)} outputs, the reference {len(expected)}.")
    explicit = atol is not None or rtol is not None
    atol = DEFAULT_ATOL if atol is None else atol
    rtol = DEFAULT_RTOL if rtol is None else rtol
    if reference64 is not None and [x.shape for x in reference64] != [x.shape for x in expected]:
        reference64, no_float64 = None, "the float64 evaluation returned other outputs than the float32 reference"
    use64 = reference64 is not None and not explicit
    rows = [_compare(i, g, e, atol, rtol) for i, (g, e) in enumerate(zip(got, expected))]
    result = {"status": "pass", "where": where, "outputs": rows,
              "max_abs_err": max((r["max_abs_err"] for r in rows), default=0.0),
              "max_rel_err": max((r["max_rel_err"] for r in rows), default=0.0)}
    if use64:
        for row, g, e, e64 in zip(rows, got, expected, reference64):
            row.pop("n_bad")  # elements beyond the fixed tolerance: not this rule's question
            row.update(oracle.judge(g, e, e64))
        result.update(rule="float64", rule_text=oracle.RULE, factor=oracle.FACTOR, ulps=oracle.ULPS)
    else:
        result.update(rule="fixed", atol=atol, rtol=rtol,
                      rule_text="|artifact - reference| <= atol + rtol * |reference|",
                      why=_why_fixed(explicit, enforce, no_float64))
    bad = [r for r in rows if not r["ok"]]
    if not enforce:
        result.update(status="pass", note="errors recorded, not enforced (quantized: see quantization.accuracy)")
    elif bad:
        raise EdgekitError(_failure(manifest.backend, where, bad, result))
    return result


def _why_fixed(explicit: bool, enforce: bool, no_float64: str | None) -> str:
    if explicit:
        return "--atol/--rtol given"
    if not enforce:
        return "quantized: recorded only; the accuracy gate judges it (quantization.accuracy)"
    return f"fallback: {no_float64 or 'no float64 reference'}"


def _run(artifact_dir: Path, backend: str, where: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    model = load(artifact_dir, trust=False)  # its own staged artifact: no policy, no unsigned warning
    try:
        return model.run(inputs)
    except EdgekitError:
        raise
    except Exception as exc:  # noqa: BLE001 - a runtime's own error types (TVM, ORT) from a compiled artifact
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise EdgekitError(f"verify: the {backend} artifact fails to run on {where} "
                           f"({type(exc).__name__}: {text}). Nothing was written. Try another backend.") from None


def _failure(backend: str, where: str, bad: list[dict], result: dict) -> str:
    if result["rule"] == "float64":
        lines = "\n".join(
            f"  output {r['index']}: {r['err_vs_float64']:.3g} from float64, bound {r['bound']:.3g} "
            f"(the float32 reference is {r['reference_err_vs_float64']:.3g} from float64)" for r in bad)
        return (f"verify failed on {where}: the {backend} artifact is further from the float64 evaluation of the "
                f"reference than float32 rounding explains ({oracle.RULE}):\n{lines}\nNothing was written. This "
                "is a wrong result, not precision: compile with --no-verify and run `edgekit inspect DIR` to find the "
                "first layer that diverges, or try another backend. --atol/--rtol override the rule if you accept "
                "this error.")
    lines = "\n".join(f"  output {r['index']}: max abs err {r['max_abs_err']:.3g}, max rel err "
                      f"{r['max_rel_err']:.3g} ({r['n_bad']} of {r['n']} elements beyond tolerance)" for r in bad)
    return (f"verify failed on {where}: the {backend} artifact disagrees with the reference beyond "
            f"atol={result['atol']:g}, rtol={result['rtol']:g} ({result['why']}):\n{lines}\nNothing was written. "
            "Loosen --atol/--rtol if this precision is expected, or report the model.")


def _compare(i: int, got: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> dict:
    if got.shape != expected.shape:
        raise EdgekitError(f"verify: output {i} has shape {list(got.shape)}, the reference {list(expected.shape)}.")
    g, e = got.astype(np.float64), expected.astype(np.float64)
    err = np.abs(g - e)
    # equal infinities and NaNs in the same places agree (inf - inf is nan)
    err[(g == e) | (np.isnan(g) & np.isnan(e))] = 0.0
    err[np.isnan(err)] = np.inf
    bad = err > atol + rtol * np.abs(e)
    finite = np.abs(e[np.isfinite(e)])
    scale = float(finite.max(initial=0.0)) or 1.0  # a zero-size output compares its shape only
    return {"index": i, "n": int(err.size), "n_bad": int(bad.sum()), "ok": not bool(bad.any()),
            "max_abs_err": float(err.max(initial=0.0)), "max_rel_err": float(err.max(initial=0.0) / scale)}
