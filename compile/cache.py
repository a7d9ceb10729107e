"""The compiled-model cache: compile on first use, reuse after, for every app and the bench.

    model = cache.load(module, example_inputs, name="cfsr_x4", backend="tvm", atol=1e-3)

The key covers everything that changes the artifact: the model's code (the source files of every nn.Module class in
it, and of `code` modules the caller names), its weights (every parameter and buffer, all bytes), the files it was
read from (`files`, e.g. a .tflite), edgekit's compile code (compile/ and kernels/), the backend's toolchain versions,
the target, the backend, the precision and quantization recipe, the example inputs' shapes and dtypes, and the
compile options. One location (edgekit.paths.artifact_cache(), or `cache_dir`); concurrent-safe: a per-key lock,
and compile_model's atomic rename, so two processes compile once and never load half an artifact.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
from pathlib import Path

import numpy as np

from edgekit import backends, paths
from edgekit.artifact import MANIFEST
from edgekit.errors import EdgekitError

KEY_VERSION = 1  # bump when the key's recipe changes


def compiled(module, example_inputs: tuple, *, name: str, backend: str, target: str = "host",
             code: tuple = (), files: tuple = (), recipe: str | None = None, cache_dir=None,
             progress: bool = False, **options) -> Path:
    """The artifact directory for this model, compiled now if the cache has none for its key (or a damaged one).

    options: compile_model's keyword options (atol, rtol, quantize, calibration, max_drop, ...). Options that are not
    plain JSON values go into the key by content: tensors and arrays by their bytes, callables (a task metric) by
    their name and their module's source, sequences element by element. `recipe`: an extra string for what the
    options cannot show (e.g. the calibration folder a metric closes over)."""
    return _entry(module, example_inputs, name=name, backend=backend, target=target, code=code, files=files,
                  recipe=recipe, cache_dir=cache_dir, progress=progress, **options).path


def _entry(module, example_inputs: tuple, *, name: str, backend: str, target: str, code: tuple, files: tuple,
           recipe: str | None, cache_dir, progress: bool, **options):
    """The cache entry as a VerifiedArtifact: every checksum checked once, under the entry's lock."""
    from edgekit.artifact import read_verified

    from .pipeline import compile_model

    digest = key(module, example_inputs, backend=backend, target=target, code=code, files=files,
                 recipe=recipe, options=options)
    root = Path(cache_dir) if cache_dir else paths.artifact_cache()
    path = root / f"{_safe(name)}-{backend}-{target}-{digest[:16]}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / MANIFEST).is_file():
            try:
                return read_verified(path)  # manifest and every checksum; a damaged entry is rebuilt below
            except EdgekitError:
                pass
        compile_model(module, example_inputs, target=target, backend=backend, output=path, name=name,
                      force=True, progress=progress, **options)
        return read_verified(path)


def key(module, example_inputs: tuple, *, backend: str, target: str, code: tuple = (), files: tuple = (),
        recipe: str | None = None, options: dict | None = None) -> str:
    """The sha256 (hex) that names a cache entry; see the module docstring for what it covers."""
    h = hashlib.sha256()

    def part(label: str, data: bytes) -> None:
        h.update(f"{label}:{len(data)}:".encode())
        h.update(data)

    plain, named = _split_options(options or {})
    for name in named:
        _digest_value(part, f"option:{name}", options[name])
    part("meta", json.dumps({"version": KEY_VERSION, "backend": backend, "target": target, "recipe": recipe,
                             "options": plain, "toolchain": toolchain(backend),
                             "inputs": [[list(x.shape), str(x.dtype)] for x in example_inputs]},
                            sort_keys=True).encode())
    part("edgekit", compile_code_digest().encode())
    if backend == "tvm":  # `edgekit tune`'s databases for the target (compile/lower/tvm_schedule.py applies them)
        from .lower.tvm_schedule import tuning_digest

        part("tuning", tuning_digest(target).encode())
    for source in sorted(model_sources(module, code)):
        part("code", Path(source).read_bytes())
    for item, tensor in module.state_dict().items():
        part(f"weight:{item}", tensor.detach().cpu().contiguous().numpy().tobytes())
    for file in files:
        part("file", Path(file).read_bytes())
    return h.hexdigest()


def model_sources(module, code: tuple = ()) -> set[str]:
    """Source files of the model's own classes (not torch's: the torch version is in the key) and of `code`."""
    import torch

    torch_root = str(Path(torch.__file__).parent)
    found = set()
    for obj in [type(m) for m in module.modules()] + list(code):
        try:
            source = inspect.getsourcefile(obj)
        except TypeError:  # built-in or dynamically created: covered by its module or the torch version
            continue
        if source and not source.startswith(torch_root) and Path(source).is_file():
            found.add(source)
    return found


def toolchain(backend: str) -> dict[str, str]:
    dists = ("edgekit", "torch", *backends.get(backend).toolchain)
    return {d: importlib.metadata.version(d) for d in dists}


@functools.lru_cache(maxsize=1)
def compile_code_digest() -> str:
    """Digest of edgekit's compile and kernel code: a change in a lowering or schedule must not reuse old artifacts."""
    h = hashlib.sha256()
    roots = [Path(__file__).parent, _package_dir("edgekit.kernels")]
    for root in roots:
        for file in sorted(root.rglob("*")):
            if file.suffix in (".py", ".cc", ".cpp") and "__pycache__" not in file.parts:
                h.update(file.relative_to(root).as_posix().encode())
                h.update(file.read_bytes())
    return h.hexdigest()


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # without importing it (the kernels import torch and TVM)
    return Path(spec.submodule_search_locations[0])


def _digest_value(part, label: str, value) -> None:
    """Feed a non-JSON option into the key by content."""
    import torch

    if isinstance(value, torch.Tensor):
        part(label, value.detach().cpu().contiguous().numpy().tobytes() + str(value.dtype).encode())
    elif isinstance(value, np.ndarray):
        part(label, np.ascontiguousarray(value).tobytes() + str(value.dtype).encode())
    elif isinstance(value, (list, tuple)):
        part(label, f"seq{len(value)}".encode())
        for i, item in enumerate(value):
            _digest_value(part, f"{label}[{i}]", item)
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            _digest_value(part, f"{label}.{k}", value[k])
    elif callable(value):
        fn = getattr(value, "fn", value)  # a metric wrapped with its reporting name
        name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        source = inspect.getsourcefile(fn) if inspect.isfunction(fn) or inspect.ismethod(fn) else None
        part(label, name.encode() + (Path(source).read_bytes() if source and Path(source).is_file() else b""))
    else:
        try:
            part(label, json.dumps(value, sort_keys=True, default=str).encode())
        except (TypeError, ValueError):
            part(label, repr(value).encode())


def _split_options(options: dict) -> tuple[dict, list[str]]:
    plain, named = {}, []
    for k, v in sorted(options.items()):
        try:
            json.dumps(v)
            plain[k] = v
        except TypeError:
            named.append(k)
    return plain, named


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:80]


def load(module, example_inputs: tuple, *, target: str = "host", code: tuple = (), files: tuple = (),
         recipe: str | None = None, cache_dir=None, progress: bool = False, **kwargs):
    """`edgekit.load(compiled(...))`: the cached artifact as a Model, from the bytes the cache lookup verified (each
    file hashed once). Entries are edgekit's own, compiled here into the user's cache: they load without a signature
    policy (checksums and containment still hold)."""
    from edgekit.runtimes.model import from_verified

    return from_verified(_entry(module, example_inputs, target=target, code=code, files=files, recipe=recipe,
                                cache_dir=cache_dir, progress=progress, **kwargs), trust=False)


def numpy_runner(model):
    """A Model as a `run(*arrays) -> list of arrays` callable, inputs cast to the manifest's dtypes."""
    dtypes = [np.dtype(s.dtype) for s in model.manifest.inputs]
    return lambda *xs: model.run([np.ascontiguousarray(x, dtype=d) for x, d in zip(xs, dtypes)])

