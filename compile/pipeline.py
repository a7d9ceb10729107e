"""The five steps: export/import -> (quantize) -> lower(target) -> write -> verify against the reference."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from edgekit.artifact import Manifest, StagingDir, TensorSpec
from edgekit.errors import EdgekitError
from edgekit import backends
from edgekit.targets import get_target, host_arch

from . import source as sources
from .lower import versions
from .quantize import Int8Static, QuantPlan, manifest_record, parse
from .quantize import apply as apply_quantization
from .quantize.calibration import load_samples, split
from .quantize.choose import GateFailed, check_final, choose_float_layers, more_float_layers
from .verify import load, reference_outputs, verify


def compile_model(model, example_inputs=None, *, target: str = "host", backend: str, output,
                  name: str | None = None, force: bool = False, check: bool = True,
                  atol: float = 1e-4, rtol: float = 1e-4, progress: bool = False,
                  quantize=None, calibration=None, max_drop: float | None = None, auto_fallback: bool = False,
                  task_metric=None) -> Path:
    """Compile `model` (torch Module + example inputs, or a path to .onnx / .tflite / FILE.py:FUNC) into an
    artifact directory at `output`; returns its path. Nothing is written unless every step succeeds.

    quantize: "int8" (static PTQ, needs `calibration`), "int8-weight-only", "int4-weight-only" or a config.
    max_drop / auto_fallback / task_metric: the accuracy gate (see compile/quantize/gate.py)."""
    tgt = get_target(target)
    lowering = backends.check(tgt, backend)
    source, oracle = _as_source(model, example_inputs, name)
    step = _stepper(progress)
    inputs = _numpy_inputs(source)
    plan = _plan(source, quantize, calibration, inputs, max_drop, auto_fallback, task_metric)
    if plan and not check:
        raise EdgekitError("--no-verify cannot be combined with --quantize: a quantized artifact ships only with a "
                           "measured accuracy figure.")
    skip = frozenset()
    with StagingDir(output, force=force) as staging:
        if plan:
            with step(f"quantizing ({plan.config.name})" + (", choosing float layers" if max_drop is not None
                                                              else "")):
                skip = choose_float_layers(source, plan)
        for refit in range(MAX_REFITS + 1):
            manifest, expected = _build(staging, source, oracle, inputs, tgt, lowering, plan, skip, step)
            if not check:
                break
            with step("verifying against the reference" + (" under the aarch64 emulator"
                                                            if tgt.arch != host_arch() else "")):
                # quantized artifacts are judged by the accuracy gate, not by fp32 tolerances
                manifest.verify = verify(staging.path, inputs, expected, atol, rtol, enforce=plan is None)
                if plan and manifest.verify["status"] == "pass":
                    try:
                        accuracy = check_final(source, plan, load(staging.path).run)
                    except GateFailed:
                        # the artifact's kernels round differently from the simulation that chose `skip`:
                        # with --auto-fallback, the next most sensitive layers go back to float and it rebuilds
                        wider = more_float_layers(source, plan, skip) if plan.auto_fallback else None
                        if wider is None or refit == MAX_REFITS:
                            raise
                        skip = wider
                        staging.clear()
                        continue
                    manifest.quantization["accuracy"] = accuracy.as_dict()
            staging.seal(manifest)
            break
        return staging.commit()


MAX_REFITS = 4  # artifact rebuilds with more float layers when the artifact misses the budget the simulation met


def _build(staging, source, oracle, inputs, tgt, lowering, plan, skip, step) -> tuple[Manifest, list]:
    """Quantize (keeping `skip` in float), lower and write the manifest; returns it and the reference outputs."""
    backend = lowering.name
    lowered_source = source
    if plan:
        with step(f"quantizing ({plan.config.name}), {len(skip)} layers in float"):
            lowered_source = apply_quantization(source, plan, backend, skip)
    with step(f"lowering {source.name} with {backend} for {tgt.name}"):
        lowered = lowering.lower_module().lower(lowered_source, tgt, staging.path, lowering.entry)
    with step("computing reference outputs"):
        expected = reference_outputs(oracle, inputs)
    manifest = Manifest(
        model=source.name, backend=backend, target=tgt.name, arch=tgt.arch,
        inputs=[_spec(f"input{i}", x) for i, x in enumerate(inputs)],
        outputs=[_spec(f"output{i}", y) for i, y in enumerate(expected)],
        toolchain=versions("torch", *lowering.toolchain), entry=lowering.entry,
        backend_info=lowered.backend_info, precision=plan.config.name if plan else "fp32",
        quantization=manifest_record(plan, backend, skip) if plan else None,
        verify={"status": "skipped", "reason": "disabled with --no-verify"})
    staging.seal(manifest)
    return manifest, expected


def _plan(source, quantize, calibration, inputs, max_drop, auto_fallback, task_metric) -> QuantPlan | None:
    if quantize is None:
        if max_drop is not None or auto_fallback:
            raise EdgekitError("--max-drop / --auto-fallback apply to quantization; add --quantize.")
        return None
    config = parse(quantize)
    if not isinstance(source, sources.TorchSource):
        raise EdgekitError(f"quantization works on PyTorch models; {source.path} is a .{source.kind} file. Quantize "
                           "the model before exporting it, or compile it in float.")
    if calibration is None and not isinstance(config, Int8Static):
        calibration = [inputs, inputs]  # weight-only needs no calibration; the example input is the held-out check
    calib, held = split(load_samples(calibration, inputs))
    return QuantPlan(config, calib, held, max_drop, auto_fallback, task_metric)


def _as_source(model, example_inputs, name):
    """(what gets lowered, what the artifact is checked against): a .tflite is lowered through PyTorch but
    checked against the TFLite runtime itself, so importer errors cannot hide."""
    if isinstance(model, (str, Path)):
        source = sources.from_spec(str(model))
    else:
        source = sources.from_module(model, example_inputs, name)
    oracle = source
    if isinstance(source, sources.FileSource) and source.kind == "tflite":
        # every backend goes through edgekit's TFLite->PyTorch importer: TVM's own TFLite frontend fails on
        # MediaPipe's models (fp16 DEQUANTIZE buffers), and one route means one set of numerics to verify
        from .tflite_import import load_tflite

        module, inputs = load_tflite(source.path)
        source = sources.from_module(module, inputs, source.name)
        oracle.example_inputs = [t.numpy() for t in inputs]
    if name:
        source.name = name
    return source, oracle


def _numpy_inputs(source) -> list[np.ndarray]:
    if isinstance(source, sources.TorchSource):
        return [t.detach().numpy() for t in source.example_inputs]
    return source.example_inputs


def _spec(name: str, x: np.ndarray) -> TensorSpec:
    if x.dtype.name not in ("float32", "float16", "int64", "int32", "int8", "uint8", "bool"):
        raise EdgekitError(f"{name}: dtype {x.dtype} is not supported in artifacts.")
    return TensorSpec(name, [int(d) for d in x.shape], x.dtype.name)


def _stepper(enabled: bool):
    if not enabled:
        return lambda _msg: contextlib.nullcontext()
    from rich.console import Console

    console = Console(stderr=True)

    @contextlib.contextmanager
    def step(msg):
        with console.status(msg + " ..."):
            yield
        console.print(f"[green]done[/] {msg}")

    return step
