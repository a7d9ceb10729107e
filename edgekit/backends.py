"""The backend registry: the one place that says what each backend is. Ground layer (device-safe: no ML imports).

A backend is a lowerer module (`lower(source, target, out) -> Lowered`, in the compile layer) and a runtime module
(`load(artifact_dir, manifest, payload) -> handle`, `run(handle, inputs) -> outputs`, in the runtimes layer; `payload`
maps each file name to the bytes edgekit verified, and the runtime loads those, never the path), named here as
import paths and imported on demand, so one backend's heavy dependencies never load for another. Everything else
(CLI choices, targets, apps, bench, emulator, tests) asks this module. Adding a backend is one new lowerer file, one
new runtime file and one `register(Backend(...))` call.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from .errors import EdgekitError
from .targets import Target, get_target, host_arch


@dataclass(frozen=True)
class Backend:
    name: str
    lowerer: str                        # module with lower(source, target, out) -> Lowered
    runtime: str                        # module with load(artifact_dir, manifest, payload) and run(handle, inputs)
    entry: str                          # the payload file the runtime loads
    toolchain: tuple[str, ...]          # distributions whose versions are recorded in the manifest (and cache keys)
    targets: tuple[str, ...] | None = None   # supported target names; None: every target
    sources: tuple[str, ...] = ("torch", "onnx")  # model kinds it lowers (a .tflite arrives as torch)
    emulator: str = "python"            # how an aarch64 artifact runs under the emulator: "python" runtime | "runner"
    device_wheels: tuple[str, ...] = ()  # aarch64 wheels its runtime needs inside the emulator / on a device
    native_code: bool = False           # the payload is machine code that runs when loaded (unsigned: a warning)
    description: str = ""

    def supports(self, target: Target) -> bool:
        return self.targets is None or target.name in self.targets

    def lower_module(self):
        return importlib.import_module(self.lowerer)

    def runtime_module(self):
        return importlib.import_module(self.runtime)


REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add (or replace, by name) a backend; returns it."""
    REGISTRY[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Backend:
    if name not in REGISTRY:
        raise EdgekitError(f"unknown backend {name!r}. Valid backends: {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def for_target(target: Target | str) -> tuple[str, ...]:
    """Names of the backends that compile for `target`, in registry order."""
    tgt = get_target(target) if isinstance(target, str) else target
    return tuple(b.name for b in REGISTRY.values() if b.supports(tgt))


def check(target: Target, backend: str) -> Backend:
    """The backend, after checking it exists and supports `target` (messages name the valid choices)."""
    b = get(backend)
    if not b.supports(target):
        raise EdgekitError(f"backend {backend!r} is not supported for target {target.name!r}; "
                           f"that target supports: {', '.join(for_target(target))}.")
    return b


def is_native(target: Target) -> bool:
    """The artifact runs on this machine's own CPU as is: same architecture and no GPU code. Native artifacts may be
    specialised to this very CPU (TVM's mcpu, ONNX Runtime's extended fusions, ExecuTorch's Python-runtime ops)."""
    return target.arch == host_arch() and not target.cuda_arch


def needs_cross_compiler(target: Target) -> bool:
    return target.arch != host_arch()


register(Backend(
    "executorch", "edgekit.compile.lower.executorch", "edgekit.runtimes.executorch", "model.pte",
    ("executorch", "torch"), targets=("host", "jetson-orin", "android-arm64", "rpi5"),
    sources=("torch",), emulator="runner",
    description="torch.export -> XNNPACK delegate -> .pte; no CUDA delegate (runs on the CPU of GPU boards)"))
register(Backend(
    "tvm", "edgekit.compile.lower.tvm", "edgekit.runtimes.tvm", "model.so", ("apache-tvm",), native_code=True,
    device_wheels=("numpy", "apache-tvm", "apache-tvm-ffi", "ml_dtypes"),
    description="Relax + edgekit's TensorIR schedules -> model.so (CPU, or CUDA with a precompiled cubin)"))
register(Backend(
    "onnxruntime", "edgekit.compile.lower.onnxruntime", "edgekit.runtimes.onnxruntime", "model.onnx",
    ("onnx", "onnxruntime"), device_wheels=("numpy", "onnxruntime"),
    description="torch.export -> ONNX -> ONNX Runtime offline graph optimisation -> model.onnx"))
