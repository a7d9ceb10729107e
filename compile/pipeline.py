"""The five steps: export/import -> (quantize) -> lower(target) -> write -> verify against the reference."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from edgekit.artifact import DTYPES, Manifest, StagingDir, TensorSpec
from edgekit.errors import EdgekitError
from edgekit import backends, trust
from edgekit.targets import get_target, host_arch

from . import dynamic
from . import source as sources
from .lower import versions
from .quantize import Int8Static, QuantPlan, manifest_record, parse
from .quantize import apply as apply_quantization
from .quantize.calibration import load_samples, split
from .quantize.choose import GateFailed, check_final, choose_float_layers, more_float_layers
from .layers import hooked
from .oracle import float64_outputs
from .verify import load, reference_outputs, verify


def compile_model(model, example_inputs=None, *, target: str = "host", backend: str, output,
                  name: str | None = None, force: bool = False, check: bool = True,
                  atol: float | None = None, rtol: float | None = None, progress: bool = False,
                  quantize=None, calibration=None, max_drop: float | None = None, auto_fallback: bool = False,
                  task_metric=None, const_inputs=None, sign=None, float_layers=(),
                  debug: bool = False, dynamic_shapes=None) -> Path:
    """Compile `model` (torch Module + example inputs, or a path to .onnx / .tflite / FILE.py:FUNC) into an
    artifact directory at `output`; returns its path. Nothing is written unless every step succeeds.

    quantize: "int8" (static PTQ, needs `calibration`), "int8-weight-only", "int4-weight-only" or a config.
    max_drop / auto_fallback / task_metric: the accuracy gate (see compile/quantize/gate.py).
    sign: an EC private key (PEM path): the staged artifact is signed (model.sig) before it is moved into place.
    float_layers: layers (module names) kept in float besides those the gate chooses (edgekit inspect rebuilds a
    quantized artifact with its recorded quantization.float_layers).
    debug: a throwaway build for `edgekit inspect` (never shipped): written without verification, quantized or not.
    example_inputs for a model file: an .npz path, a dict {input name or inputN: array} or a list of arrays, used
    for verification and recorded by sha256; const_inputs: {ONNX input name: array or .npy path} folded into the
    graph as constants (the artifact has one input fewer for each).
    dynamic_shapes: axes whose size varies at run time, each with its range: torch.export's own form ({input name:
    {axis: torch.export.Dim(name, min=, max=)}} or one entry per input) or edgekit's text ("input0:2=64..1024,3=64..1024",
    or a list of such strings; compile/dynamic.py). One artifact takes every size in range; it is verified at the
    example's size and at the smallest, an odd and the largest size."""
    tgt = get_target(target)
    lowering = backends.check(tgt, backend)
    _check_source_kind(model, lowering)
    source, oracle = _as_source(model, example_inputs, name, const_inputs, lowering, dynamic_shapes)
    step = _stepper(progress)
    inputs = _numpy_inputs(source)
    if source.dynamic and quantize is not None:
        raise EdgekitError("--quantize with --dynamic is not supported yet: quantize a static artifact per size, or "
                           "compile the dynamic one in float.")
    input_sets = _verification_sets(source, inputs)
    plan = _plan(source, quantize, calibration, inputs, max_drop, auto_fallback, task_metric)
    if plan and not check and not debug:
        raise EdgekitError("--no-verify cannot be combined with --quantize: a quantized artifact ships only with a "
                           "measured accuracy figure.")
    skip = frozenset()
    oracle64 = None  # per input set: (float64 reference outputs or None, why not), computed at the first verification
    with StagingDir(output, force=force) as staging:
        if plan:
            with step(f"quantizing ({plan.config.name})" + (", choosing float layers" if max_drop is not None
                                                              else "")):
                skip = choose_float_layers(source, plan) | frozenset(float_layers)
        for refit in range(MAX_REFITS + 1):
            manifest, expected = _build(staging, source, oracle, input_sets, tgt, lowering, plan, skip, step)
            if not check:
                manifest.verify.update(_model_record(model))
                staging.seal(manifest)
                break
            with step("verifying against the reference" + (" under the aarch64 emulator"
                                                            if tgt.arch != host_arch() else "")):
                # quantized artifacts are judged by the accuracy gate, not by fp32 tolerances
                if plan is None and atol is None and rtol is None and oracle64 is None:
                    oracle64 = [float64_outputs(source if isinstance(source, sources.TorchSource) else oracle, s)
                                for s in input_sets]
                with _naming_outputs(source):
                    manifest.verify = _verify_sets(staging.path, input_sets, expected, atol, rtol, plan is None,
                                                   oracle64)
                manifest.verify.update(_model_record(model))
                if plan and manifest.verify["status"] == "pass":
                    try:
                        accuracy = check_final(source, plan, load(staging.path, trust=False).run, skip)
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
        if sign is not None:
            with step("signing"):
                trust.sign(staging.path, sign)
        return staging.commit()


def _model_record(model) -> dict:
    """What was compiled, for `edgekit inspect` to rebuild its graph: a model file's absolute path (FILE.py:FUNC,
    .onnx, .tflite); nothing for a Python object."""
    if not isinstance(model, (str, Path)):
        return {}
    file, sep, func = str(model).rpartition(":")
    if sep and file.endswith(".py"):
        return {"model": f"{Path(file).absolute()}:{func}"}
    return {"model": str(Path(model).absolute())}


def _verification_sets(source, inputs: list[np.ndarray]) -> list[list[np.ndarray]]:
    """The example inputs; with dynamic axes also the smallest, an odd and the largest size (values drawn from the
    example's own values)."""
    if not source.dynamic:
        return [inputs]
    sets = [inputs] + [dynamic.inputs_at(source.dynamic, inputs, size, seed=i)
                       for i, size in enumerate(dynamic.sizes(source.dynamic))]
    unique = {tuple(tuple(x.shape) for x in s): s for s in reversed(sets)}  # the example's own shape: its values
    return list(reversed(unique.values()))


def _verify_sets(path: Path, input_sets, expected_sets, atol, rtol, enforce: bool, oracle64) -> dict:
    """verify() at every input set; one set: its record as is, several: the worst errors and each size's record."""
    results = []
    for i, (inputs, expected) in enumerate(zip(input_sets, expected_sets)):
        try:
            results.append(verify(path, inputs, expected, atol, rtol, enforce=enforce,
                                  **_oracle_args(oracle64[i] if oracle64 else None)))
        except EdgekitError as exc:
            if len(input_sets) == 1:
                raise
            raise EdgekitError(f"at input shape(s) {dynamic.shape_text(inputs)}: {exc}") from None
    if len(results) == 1:
        return results[0]
    merged = dict(max(results, key=lambda r: r["max_abs_err"]))
    merged["sizes"] = [{"input_shapes": [list(x.shape) for x in inputs], "max_abs_err": r["max_abs_err"],
                        "max_rel_err": r["max_rel_err"], "outputs": r["outputs"]}
                       for inputs, r in zip(input_sets, results)]
    merged["max_rel_err"] = max(r["max_rel_err"] for r in results)
    return merged


def _oracle_args(oracle64) -> dict:
    """verify()'s float64 reference (None: quantized or --atol/--rtol given, so no float64 rule applies)."""
    if oracle64 is None:
        return {}
    reference64, why_not = oracle64
    return {"reference64": reference64, "no_float64": why_not}


MAX_REFITS = 4  # artifact rebuilds with more float layers when the artifact misses the budget the simulation met


def _build(staging, source, oracle, input_sets, tgt, lowering, plan, skip, step) -> tuple[Manifest, list]:
    """Quantize (keeping `skip` in float), lower and write the manifest; returns it and the reference outputs of
    each input set (the first: the example inputs)."""
    backend = lowering.name
    lowered_source = source
    if plan:
        with step(f"quantizing ({plan.config.name}), {len(skip)} layers in float"):
            lowered_source = apply_quantization(source, plan, backend, skip)
    with step(f"lowering {source.name} with {backend} for {tgt.name}"), _original_path(source):
        lowered = _lower(lowering, hooked(lowered_source), tgt, staging.path)
    with step("computing reference outputs"), _original_path(oracle):
        expected = [reference_outputs(oracle, inputs) for inputs in input_sets]
    inputs = input_sets[0]
    manifest = Manifest(
        model=source.name, backend=backend, target=tgt.name, arch=tgt.arch,
        inputs=[_spec(f"input{i}", x, dynamic.specs(source.dynamic, i)) for i, x in enumerate(inputs)],
        outputs=[_spec(f"output{i}", y, _seen_ranges(f"output{i}", [e[i] for e in expected]))
                 for i, y in enumerate(expected[0])],
        toolchain=versions("torch", *lowering.toolchain), entry=lowering.entry,
        backend_info=lowered.backend_info, precision=plan.config.name if plan else "fp32",
        quantization=manifest_record(plan, backend, skip) if plan else None,
        verify={"status": "skipped", "reason": "disabled with --no-verify"},
        example_inputs=_inputs_record(source, oracle, inputs),
        const_inputs=getattr(source, "const_inputs", None) or None)
    manifest.sizes = sizes(staging.path, source)
    staging.seal(manifest)
    return manifest, expected


def _seen_ranges(name: str, outputs: list[np.ndarray]) -> dict | None:
    """An output's axes that changed size across the verified input sizes: the smallest and largest seen."""
    axes = {}
    for axis in range(outputs[0].ndim):
        seen = [y.shape[axis] for y in outputs]
        if min(seen) != max(seen):
            axes[str(axis)] = {"name": f"{name}_{axis}", "min": int(min(seen)), "max": int(max(seen))}
    return axes or None


def sizes(payload_dir: Path, source) -> dict:
    """The payload's bytes beside the model's weights as given to compile (every distinct parameter and buffer, or
    ONNX initializer, in the dtype it is stored in there): an artifact much larger than its weights stores something
    twice; a quantized one shows what it saved."""
    payload = sum(p.stat().st_size for p in payload_dir.rglob("*") if p.is_file() and p.name != "manifest.json")
    weights = _weight_bytes(source)
    return {"payload_bytes": payload, "weight_bytes": weights,
            "payload_per_weight_byte": round(payload / weights, 4) if weights else None}


def _weight_bytes(source) -> int | None:
    if isinstance(source, sources.TorchSource):
        seen = {}  # tied weights share one storage: counted once
        for t in source.module.state_dict(keep_vars=True).values():
            seen.setdefault((t.data_ptr(), t.dtype, tuple(t.shape)), t.numel() * t.element_size())
        return sum(seen.values())
    if isinstance(source, sources.FileSource) and source.kind == "onnx":
        import onnx
        from onnx import helper

        graph = onnx.load(str(source.path), load_external_data=False).graph
        return sum(int(np.prod(t.dims, dtype=np.int64)) *
                   np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize for t in graph.initializer)
    return None


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


def _inputs_record(source, oracle, inputs) -> dict:
    """Where verification's inputs came from, with their sha256 (of the user's .npz bytes, else of the arrays)."""
    record = dict(getattr(source, "inputs_record", None) or getattr(oracle, "inputs_record", None) or
                  {"source": "module", "how": "the example inputs given with the model"})
    if record.get("source") != "user":
        record["sha256"] = sources.arrays_digest(inputs)
    return record


def _check_source_kind(model, lowering) -> None:
    """Refuse a model file the backend cannot take before any import work (a .tflite arrives as torch)."""
    if not isinstance(model, (str, Path)) or not str(model).endswith(".onnx") or "onnx" in lowering.sources:
        return
    takes = [b for b in backends.names() if "onnx" in backends.get(b).sources]
    raise EdgekitError(f"backend {lowering.name!r} compiles PyTorch models (and .tflite, imported to PyTorch); "
                       f"{model} is an ONNX model and edgekit has no ONNX->PyTorch converter (none is maintained "
                       f"in its pinned toolchain). Use --backend {' or '.join(takes)} for it, or compile the "
                       "PyTorch model the .onnx was exported from.")


@contextlib.contextmanager
def _original_path(source):
    """Messages name the user's model file, not the private copy with folded inputs that is lowered."""
    try:
        yield
    except EdgekitError as exc:
        origin = getattr(source, "origin", None)
        if origin is None or str(source.path) not in str(exc):
            raise
        raise EdgekitError(str(exc).replace(str(source.path), str(origin))) from None


def _lower(lowering, source, tgt, out):
    """The backend's lowerer; for an ONNX file, any importer/lowering failure becomes one readable message."""
    try:
        return lowering.lower_module().lower(source, tgt, out, lowering.entry)
    except EdgekitError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        others = [b for b in backends.names() if b != lowering.name]
        if getattr(source, "dynamic", None) and not (isinstance(source, sources.FileSource) and source.kind == "onnx"):
            sizes = ", ".join(f"{d.name} {d.min}..{d.max}" for d in dynamic.symbols(source.dynamic).values())
            raise EdgekitError(f"{lowering.name} failed to lower {source.name} with dynamic sizes ({sizes}) for "
                               f"{tgt.name} ({type(exc).__name__}: {text}). Try --backend {' or '.join(others)}, or "
                               "compile without --dynamic (one artifact per size).") from None
        if not (isinstance(source, sources.FileSource) and source.kind == "onnx"):
            raise
        from .onnx_model import nodes_named_in

        others = [b for b in backends.names() if b != lowering.name and "onnx" in backends.get(b).sources]
        nodes = nodes_named_in(source.path, text)
        at = f" at {', '.join(nodes[:3])}{' ...' if len(nodes) > 3 else ''}" if nodes else ""
        raise EdgekitError(f"{source.path}: {lowering.name} failed to lower the model for {tgt.name}{at} "
                           f"({type(exc).__name__}: {text}). Try --backend {' or '.join(others) or 'another'}, "
                           "or --const-inputs for inputs that set shapes.") from None


@contextlib.contextmanager
def _naming_outputs(source):
    """A verify failure on an ONNX model says which node computes each output it names."""
    try:
        yield
    except EdgekitError as exc:
        if not (isinstance(source, sources.FileSource) and source.kind == "onnx" and str(exc).startswith("verify")):
            raise
        from .onnx_model import output_producers

        producers = output_producers(source.path)
        if not producers:
            raise
        named = "; ".join(f"output {i} comes from {p}" for i, p in enumerate(producers))
        raise EdgekitError(f"{exc} ({named}: try another backend for that op.)") from None


def _as_source(model, example_inputs, name, const_inputs=None, lowering=None, dynamic_shapes=None):
    """(what gets lowered, what the artifact is checked against): a .tflite is lowered through PyTorch but
    checked against the TFLite runtime itself, so importer errors cannot hide."""
    if isinstance(model, (str, Path)):
        source = sources.from_spec(str(model), example_inputs, const_inputs, dynamic_shapes)
        if lowering is not None and isinstance(source, sources.FileSource) and source.kind == "onnx":
            source = sources.fold_shape_inputs(source, lowering)
    elif const_inputs:
        raise EdgekitError("const_inputs folds inputs of an ONNX model file; this model is a torch.nn.Module.")
    elif isinstance(example_inputs, (str, Path, dict)) or (
            isinstance(example_inputs, (list, tuple)) and example_inputs
            and all(isinstance(x, np.ndarray) for x in example_inputs)):
        source = sources.from_user_arrays(model, example_inputs, name)
    else:
        source = sources.from_module(model, example_inputs, name)
    if isinstance(source, sources.TorchSource) and not source.dynamic:
        source = sources.with_dynamic(source, dynamic_shapes)
    oracle = source
    if isinstance(source, sources.FileSource) and source.kind == "tflite":
        # every backend goes through edgekit's TFLite->PyTorch importer: TVM's own TFLite frontend fails on
        # MediaPipe's models (fp16 DEQUANTIZE buffers), and one route means one set of numerics to verify
        from .tflite_import import load_tflite

        module, inputs = load_tflite(source.path)
        if oracle.inputs_record and oracle.inputs_record.get("source") == "user":
            import torch

            inputs = tuple(torch.from_numpy(np.array(x)) for x in oracle.example_inputs)
        source = sources.from_module(module, inputs, source.name)
        source.inputs_record = oracle.inputs_record if oracle.inputs_record.get("source") == "user" else {
            "source": "generated", "how": "edgekit's TFLite importer: seeded uniform [0, 1)"}
        oracle.example_inputs = [t.numpy() for t in inputs]
    if name:
        source.name = name
    return source, oracle


def _numpy_inputs(source) -> list[np.ndarray]:
    if isinstance(source, sources.TorchSource):
        return [t.detach().numpy() for t in source.example_inputs]
    return source.example_inputs


def _spec(name: str, x: np.ndarray, ranges: dict | None = None) -> TensorSpec:
    if x.dtype.name not in DTYPES:
        raise EdgekitError(f"{name}: dtype {x.dtype} is not supported in artifacts.")
    return TensorSpec(name, [int(d) for d in x.shape], x.dtype.name, ranges)


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
