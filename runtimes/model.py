"""`edgekit.load(dir) -> Model`: checks first (trust policy, schema, containment, every checksum, target vs this
machine), then loads the very bytes it checked."""
from __future__ import annotations

import inspect
import tempfile
import threading
from pathlib import Path

import numpy as np

from edgekit import backends
from edgekit.artifact import Manifest, TensorSpec, VerifiedArtifact, read_verified
from edgekit.errors import EdgekitError
from edgekit.targets import host_arch

from .base import benchmark
from .payload_check import check_payload


class Model:
    def __init__(self, path: Path, manifest: Manifest, runner, digest: str | None = None):
        self.path = path
        self.manifest = manifest
        self.digest = digest  # sha256 of manifest.json as loaded (`--expect-digest` pins it)
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
    """Loads the bytes `read_verified` hashed: runtimes that take `payload` get them in memory; an older runtime
    (load(artifact_dir, manifest)) gets a private 0700 copy of exactly those bytes, never the user's path."""

    def __init__(self, artifact: VerifiedArtifact):
        manifest = artifact.manifest
        self.backend = backends.get(manifest.backend).runtime_module()
        if "payload" in inspect.signature(self.backend.load).parameters:
            self.handle = self.backend.load(artifact.path, manifest, payload=artifact.payload)
        else:
            with tempfile.TemporaryDirectory(prefix="edgekit-artifact-") as private:
                self.handle = self.backend.load(artifact.write_to(Path(private) / "a"), manifest)

    def run(self, inputs):
        return self.backend.run(self.handle, inputs)

    def benchmark(self, inputs, warmup, iters):
        return benchmark(self.run, inputs, warmup, iters)


class _Emulated:
    """aarch64 artifact on an x86_64 host: every call runs inside the QEMU sysroot."""

    def __init__(self, artifact: VerifiedArtifact):
        from . import emulator

        self.emulator, self.artifact, self.manifest = emulator, artifact, artifact.manifest

    def run(self, inputs):  # the host-verified bytes go into the guest, not a copy of the user's directory
        return self.emulator.run_artifact(self.artifact, self.manifest, inputs)[0]

    def benchmark(self, inputs, warmup, iters):
        return self.emulator.run_artifact(self.artifact, self.manifest, inputs,
                                          benchmark={"warmup": warmup, "iters": iters})[1]


def load(artifact_dir, trust=None, expect_digest: str | None = None) -> Model:
    """trust: a public key path (the artifact must carry a valid signature by it), a trust.Policy, None ($EDGEKIT_TRUST
    if set, else no policy) or False (no policy, no warning). expect_digest: manifest.json's sha256. Every check runs
    before any payload byte reaches a runtime."""
    from edgekit import trust as trusting

    policy = trusting.policy(trust, expect_digest)
    return from_verified(read_verified(Path(artifact_dir), policy), trust=trust, policy=policy)


def from_verified(artifact: VerifiedArtifact, trust=None, policy=None) -> Model:
    """A Model from bytes `read_verified` already checked (under `policy`); nothing is hashed again."""
    from edgekit import trust as trusting

    manifest = artifact.manifest
    check_runnable(manifest)
    check_payload(manifest, artifact.payload, str(artifact.path))  # malformed payloads never reach native code
    if policy is None and trust is not False:
        trusting.warn_unsigned(artifact, native=backends.get(manifest.backend).native_code)
    runner = _Emulated if manifest.arch != host_arch() else _Native
    return Model(artifact.path, manifest, runner(artifact), artifact.digest)


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
        if x.dtype.hasobject or x.dtype.fields is not None or x.dtype.subdtype is not None:
            raise EdgekitError(f"input {i} ({spec.name}) is an array of {x.dtype} (objects or records); expected "
                               f"plain numbers {spec.describe()}. Save it with numpy.save from a numeric array.")
        if x.dtype.kind in "biufc" and not x.dtype.isnative:  # e.g. big-endian '>f4' from another machine
            x = np.asarray(x, dtype=x.dtype.newbyteorder("="))  # same values, this machine's byte order
        if not _fits(x, spec) or x.dtype != np.dtype(spec.dtype):
            others = f" All inputs: {expected}." if len(specs) > 1 else ""
            raise EdgekitError(f"input {i} ({spec.name}) is {x.dtype.name}{list(x.shape)}; expected "
                               f"{spec.describe()}.{_out_of_range(x, spec)}{others}")
        arrays.append(np.asarray(x, order="C"))  # keeps 0-d inputs 0-d (ascontiguousarray: 1-d)
    _check_shared_sizes(specs, arrays)
    return arrays


def _fits(x: np.ndarray, spec: TensorSpec) -> bool:
    """Same rank; each static axis its size, each dynamic axis within its range."""
    if x.ndim != len(spec.shape):
        return False
    dynamic = spec.dynamic or {}
    return all(d["min"] <= n <= d["max"] if (d := dynamic.get(str(axis))) else n == want
               for axis, (n, want) in enumerate(zip(x.shape, spec.shape)))


def _out_of_range(x: np.ndarray, spec: TensorSpec) -> str:
    """Which axis is wrong and what it accepts: the compiled range of a dynamic axis, or its one size."""
    if x.ndim != len(spec.shape):
        return f" It has rank {x.ndim}; the model takes rank {len(spec.shape)}."
    for axis, (n, want) in enumerate(zip(x.shape, spec.shape)):
        d = (spec.dynamic or {}).get(str(axis))
        if d and not d["min"] <= n <= d["max"]:
            return (f" Axis {axis} ({d['name']}) is {n}, outside the range {d['min']}..{d['max']} it was compiled "
                    f"for: resize or tile the input, or recompile with a wider --dynamic range.")
        if not d and n != want:
            return f" Axis {axis} is {n}; it is static ({want}): recompile with --dynamic to vary it."
    return ""


def _check_shared_sizes(specs: list[TensorSpec], arrays: list[np.ndarray]) -> None:
    """Axes that share one symbol (e.g. the same sequence length in two inputs) must agree."""
    seen = {}
    for spec, x in zip(specs, arrays):
        for axis, d in (spec.dynamic or {}).items():
            n = x.shape[int(axis)]
            first = seen.setdefault(d["name"], (spec.name, axis, n))
            if first[2] != n:
                raise EdgekitError(f"{spec.name} axis {axis} is {n} but {first[0]} axis {first[1]} is {first[2]}; "
                                   f"both are the dynamic size {d['name']!r} and must be equal.")


def example_inputs(manifest: Manifest) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s.shape).astype(s.dtype) if s.dtype.startswith("float")
            else np.zeros(s.shape, dtype=s.dtype) for s in manifest.inputs]
