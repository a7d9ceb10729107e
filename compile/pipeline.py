"""The five steps: export/import -> (quantize) -> lower(target) -> write -> verify against the reference."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from edgekit.artifact import Manifest, StagingDir, TensorSpec
from edgekit.errors import EdgekitError
from edgekit.targets import check_backend, get_target

from . import source as sources
from .lower import lowerer, versions
from .verify import reference_outputs, verify


def compile_model(model, example_inputs=None, *, target: str = "host", backend: str, output,
                  name: str | None = None, force: bool = False, check: bool = True,
                  atol: float = 1e-4, rtol: float = 1e-4, progress: bool = False) -> Path:
    """Compile `model` (torch Module + example inputs, or a path to .onnx / .tflite / FILE.py:FUNC) into an
    artifact directory at `output`; returns its path. Nothing is written unless every step succeeds."""
    tgt = get_target(target)
    check_backend(tgt, backend)
    source = _as_source(model, example_inputs, name, backend)
    step = _stepper(progress)
    with StagingDir(output, force=force) as staging:
        with step(f"lowering {source.name} with {backend} for {tgt.name}"):
            lowered = lowerer(backend).lower(source, tgt, staging.path)
        inputs = _numpy_inputs(source)
        with step("computing reference outputs"):
            expected = reference_outputs(source, inputs)
        manifest = Manifest(
            model=source.name, backend=backend, target=tgt.name, arch=tgt.arch,
            inputs=[_spec(f"input{i}", x) for i, x in enumerate(inputs)],
            outputs=[_spec(f"output{i}", y) for i, y in enumerate(expected)],
            toolchain={**versions("torch"), **lowered.toolchain}, entry=lowered.entry,
            backend_info=lowered.backend_info,
            verify={"status": "skipped", "reason": "disabled with --no-verify"})
        staging.seal(manifest)
        if check:
            with step("verifying against the reference" + (" under the aarch64 emulator"
                                                            if tgt.arch != _host() else "")):
                manifest.verify = verify(staging.path, inputs, expected, atol, rtol)
            staging.seal(manifest)
        return staging.commit()


def _as_source(model, example_inputs, name, backend):
    if isinstance(model, (str, Path)):
        source = sources.from_spec(str(model))
    else:
        source = sources.from_module(model, example_inputs, name)
    if isinstance(source, sources.FileSource) and source.kind == "tflite" and backend != "tvm":
        from .tflite_import import load_tflite  # TVM reads TFLite itself; the others go through PyTorch

        module, inputs = load_tflite(source.path)
        source = sources.from_module(module, inputs, source.name)
    if name:
        source.name = name
    return source


def _numpy_inputs(source) -> list[np.ndarray]:
    if isinstance(source, sources.TorchSource):
        return [t.detach().numpy() for t in source.example_inputs]
    return source.example_inputs


def _spec(name: str, x: np.ndarray) -> TensorSpec:
    if x.dtype.name not in ("float32", "float16", "int64", "int32", "int8", "uint8", "bool"):
        raise EdgekitError(f"{name}: dtype {x.dtype} is not supported in artifacts.")
    return TensorSpec(name, [int(d) for d in x.shape], x.dtype.name)


def _host() -> str:
    from edgekit.targets import host_arch

    return host_arch()


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
