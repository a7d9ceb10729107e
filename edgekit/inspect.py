"""`edgekit inspect DIR`: where, layer by layer, an artifact's backend leaves float rounding behind.

The artifact's manifest names the backend, target and precision; the model comes from the manifest's record of what
was compiled (`verify.model`) or from --model, given as to `edgekit compile`. The debug build: the tapped graph of
compile/layers.py (every op's output also a graph output) compiled by the same backend, target, quantization and
lowering code as the artifact, and run where the artifact runs (the emulator for aarch64 targets).
"""
from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path

import numpy as np

from .compile import layers
from .compile.layers import format_table  # noqa: F401 - the table, shared with the quantization gate's report
from .compile.oracle import RULE, ULPS
from .errors import EdgekitError


def inspect_artifact(artifact_dir, model=None, inputs: list[np.ndarray] | None = None, calibration=None) -> dict:
    """The layer table of the artifact at `artifact_dir`. `model`: a torch.nn.Module with example inputs as
    (module, inputs), or a spec as `edgekit compile --model` takes (default: what the manifest records)."""
    from .artifact import read_manifest

    artifact_dir = Path(artifact_dir)
    if not (artifact_dir / "manifest.json").is_file():
        raise EdgekitError(f"{artifact_dir}: not an edgekit artifact (no manifest.json). Pass the directory "
                           "`edgekit compile --output` wrote.")
    manifest = read_manifest(artifact_dir)
    module, example = _model(model if model is not None else manifest.verify.get("model"), artifact_dir)
    if inputs is not None:
        example = _user_inputs(inputs, example)
    quantize = manifest.precision if manifest.precision != "fp32" else None
    if quantize == "int8" and calibration is None:
        raise EdgekitError(f"{artifact_dir} is an int8 artifact: its debug build is quantized again, so inspect "
                           "needs the calibration samples it was compiled with: --calibration DIR.")
    report = inspect_module(module, example, target=manifest.target, backend=manifest.backend, name=manifest.model,
                            quantize=quantize, calibration=calibration,
                            float_layers=(manifest.quantization or {}).get("float_layers", []))
    report["artifact"] = str(artifact_dir)
    return report


def inspect_module(module, example_inputs, *, target: str, backend: str, name: str = "model",
                   quantize=None, calibration=None, float_layers=()) -> dict:
    """The whole layer table of `module` on `backend` for `target`: {"rows", "first_divergent", ...}."""
    # quantized: per layer (the quantizers need the nn.Modules); float: per aten op of the exported graph
    tapped = (layers.tap_modules(copy.deepcopy(module), example_inputs) if quantize else
              layers.tap(module, example_inputs, name))
    ref32, ref64 = layers.reference_values(tapped, module, example_inputs)
    with tempfile.TemporaryDirectory(prefix="edgekit-inspect-") as tmp:
        got = debug_build(tapped, example_inputs, target, backend, Path(tmp), quantize, calibration,
                          [f"inner.{n}" for n in float_layers])  # the tapped model holds the model as `inner`
    rows = layers.table(tapped, got, ref32, ref64, quantized=quantize is not None)
    first = layers.first_divergent(rows)
    return {"model": name, "backend": backend, "target": target, "precision": quantize or "fp32",
            "rule": RULE if ref64 is not None else f"{ULPS} ulp(float32) of max|fp32| (no float64 evaluation)",
            "float64": ref64 is not None, "rows": rows,
            "first_divergent": None if first is None else first["name"]}


def debug_build(tapped, example_inputs, target: str, backend: str, workdir: Path,
                quantize=None, calibration=None, float_layers=()) -> list[np.ndarray]:
    """Lower the tapped graph with the artifact's backend, target and quantization and run it (under the emulator
    for aarch64 targets); returns every tapped value as the backend computed it."""
    from .compile.pipeline import compile_model
    from .runtimes.model import load

    out = workdir / "debug"
    compile_model(tapped.module, tuple(example_inputs), target=target, backend=backend, output=out,
                  name="inspect-debug", check=False, debug=True, quantize=quantize, calibration=calibration,
                  float_layers=float_layers)
    got = load(out, trust=False).run([t.detach().numpy() for t in example_inputs])
    if len(got) != len(tapped.names):
        raise EdgekitError(f"inspect: the {backend} debug build returned {len(got)} values for "
                           f"{len(tapped.names)} ops.")
    return got


def _model(spec, artifact_dir: Path):
    """(torch module, example input tensors) for a module pair or a compile-style spec."""
    if spec is None:
        raise EdgekitError(f"{artifact_dir}: its manifest does not record which model was compiled (it was given "
                           "as a Python object); pass --model as you passed it to `edgekit compile`.")
    if isinstance(spec, tuple):
        return spec[0], tuple(spec[1])
    from .compile.pipeline import _as_source
    from .compile.source import TorchSource

    source, _ = _as_source(spec, None, None)
    if not isinstance(source, TorchSource):
        raise EdgekitError(f"{spec}: inspect works on PyTorch and TFLite models (it reads the torch.export graph); "
                           "an .onnx model has no PyTorch graph here.")
    return source.module, source.example_inputs


def _user_inputs(arrays: list[np.ndarray], example) -> tuple:
    import torch

    if len(arrays) != len(example):
        raise EdgekitError(f"--input: got {len(arrays)} arrays; the model takes {len(example)} inputs.")
    for i, (x, e) in enumerate(zip(arrays, example)):
        if list(x.shape) != list(e.shape) or str(x.dtype) != str(e.dtype).replace("torch.", ""):
            raise EdgekitError(f"--input #{i}: {x.dtype}{list(x.shape)}; the model's input is "
                               f"{str(e.dtype).replace('torch.', '')}{list(e.shape)}.")
    return tuple(torch.from_numpy(np.array(x)) for x in arrays)


def summary(report: dict) -> str:
    first = report["first_divergent"]
    where = (f"first op beyond float rounding: {first} "
             f"({next(r for r in report['rows'] if r['name'] == first)['module'] or 'top level'})"
             if first else "no op beyond float rounding")
    return (f"{report['model']} on {report['backend']} for {report['target']} ({report['precision']}), "
            f"{len(report['rows'])} ops; {where}. Rule: {report['rule']}.")


def write_json(report: dict) -> str:
    """Strict JSON: an infinite SQNR (identical values) is written as the string "inf"."""
    return json.dumps(_finite(report), indent=2, allow_nan=False)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def plot(report: dict, file) -> None:
    """Error per layer (log scale), the float rounding bound beside it; SQNR per layer for quantized builds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    x = [r["index"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.12), 4))
    if any("sqnr_db" in r for r in rows):
        ax.plot(x, [r["sqnr_db"] for r in rows], marker=".", label="SQNR vs fp32 eager (dB)")
        ax.set_ylabel("dB")
    else:
        ax.semilogy(x, [max(r.get("max_err_vs_float64", r["max_err_vs_fp32"]), 1e-30) for r in rows], marker=".",
                    label="max |artifact - float64|")
        ax.semilogy(x, [max(r["bound"], 1e-30) for r in rows], linestyle="--", label="float rounding bound")
        ax.set_ylabel("abs error")
    ax.set_xlabel("op (graph order)")
    ax.set_title(f"{report['model']}: {report['backend']} / {report['target']} ({report['precision']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(file, format="png")
    plt.close(fig)
