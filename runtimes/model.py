"""`edgekit.load(dir) -> Model`: checks first (schema, target vs this machine, every checksum), then loads."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from edgekit import backends
from edgekit.artifact import Manifest, TensorSpec, load_verified
from edgekit.errors import EdgekitError
from edgekit.targets import host_arch

from .base import benchmark


class Model:
    def __init__(self, path: Path, manifest: Manifest, runner):
        self.path = path
        self.manifest = manifest
        self._runner = runner
        self._lock = threading.Lock()  # runtime handles are not documented as re-entrant

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        arrays = check_inputs(self.manifest.inputs, inputs)
        with self._lock:
            return self._runner.run(arrays)

    def benchmark(self, warmup: int = 3, iters: int = 20, inputs: list[np.ndarray] | None = None) -> dict:
        arrays = check_inputs(self.manifest.inputs, inputs if inputs is not None else example_inputs(self.manifest))
        return self._runner.benchmark(arrays, warmup, iters)

    def __repr__(self) -> str:
        m = self.manifest
        return f"Model({m.model!r}, backend={m.backend}, target={m.target}, precision={m.precision})"


class _Native:
    def __init__(self, path: Path, manifest: Manifest):
        self.backend = backends.get(manifest.backend).runtime_module()
        self.handle = self.backend.load(path, manifest)

    def run(self, inputs):
        return self.backend.run(self.handle, inputs)

    def benchmark(self, inputs, warmup, iters):
        return benchmark(self.run, inputs, warmup, iters)


class _Emulated:
    """aarch64 artifact on an x86_64 host: every call runs inside the QEMU sysroot."""

    def __init__(self, path: Path, manifest: Manifest):
        from . import emulator

        self.emulator, self.path, self.manifest = emulator, path, manifest

    def run(self, inputs):
        return self.emulator.run_artifact(self.path, self.manifest, inputs)[0]

    def benchmark(self, inputs, warmup, iters):
        return self.emulator.run_artifact(self.path, self.manifest, inputs,
                                          benchmark={"warmup": warmup, "iters": iters})[1]


def load(artifact_dir) -> Model:
    path = Path(artifact_dir)
    manifest = load_verified(path)
    check_runnable(manifest)
    runner = _Emulated if manifest.arch != host_arch() else _Native
    return Model(path, manifest, runner(path, manifest))


def check_runnable(manifest: Manifest) -> None:
    cuda = manifest.backend_info.get("device_code")
    if cuda and not has_cuda():
        raise EdgekitError(f"this artifact runs on a CUDA GPU ({cuda['arch']}, target {manifest.target}) and this "
                           "machine has none. Copy it to the device, or compile a CPU target to run here.")
    if manifest.arch == host_arch():
        return
    if manifest.arch == "aarch64" and host_arch() == "x86_64":
        return  # runs under the emulator; it reports its own set-up errors
    raise EdgekitError(f"this artifact is for {manifest.arch} (target {manifest.target}); this machine is "
                       f"{host_arch()}. Run it on the device or compile for --target host.")


def has_cuda() -> bool:
    return Path("/dev/nvidia0").exists() or Path("/dev/nvhost-ctrl-gpu").exists()


def check_inputs(specs: list[TensorSpec], inputs) -> list[np.ndarray]:
    expected = "; ".join(s.describe() for s in specs)
    if not isinstance(inputs, (list, tuple)):
        raise EdgekitError(f"inputs must be a list of numpy arrays; this model expects {len(specs)}: {expected}.")
    if len(inputs) != len(specs):
        raise EdgekitError(f"got {len(inputs)} input(s); this model expects {len(specs)}: {expected}.")
    arrays = []
    for i, (x, spec) in enumerate(zip(inputs, specs)):
        if not isinstance(x, np.ndarray):
            raise EdgekitError(f"input {i} ({spec.name}) is a {type(x).__name__}; expected a numpy array "
                               f"{spec.describe()}.")
        if list(x.shape) != list(spec.shape) or x.dtype.name != spec.dtype:
            others = f" All inputs: {expected}." if len(specs) > 1 else ""
            raise EdgekitError(f"input {i} ({spec.name}) is {x.dtype.name}{list(x.shape)}; expected "
                               f"{spec.describe()}.{others}")
        arrays.append(np.ascontiguousarray(x))
    return arrays


def example_inputs(manifest: Manifest) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s.shape).astype(s.dtype) if s.dtype.startswith("float")
            else np.zeros(s.shape, dtype=s.dtype) for s in manifest.inputs]
