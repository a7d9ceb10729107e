"""Every app's networks as numpy-in, numpy-out callables: eager torch, or an artifact from edgekit's one compiled-model
cache (edgekit.compile.cache: keyed by the model's code and weights, edgekit's compile code, the toolchain, target,
backend, precision and shapes, so no app names or fingerprints its own artifacts).

    run = runner(module, example_inputs, "chimp_detector", backend, cache_dir=args.artifacts, atol=1e-3, rtol=1e-3)
    outputs = run(*arrays)   # list of arrays
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from edgekit import backends
from edgekit.apps.progress import enabled as progress_enabled
from edgekit.compile import cache
from edgekit.errors import EdgekitError

Runner = Callable[..., list[np.ndarray]]
BACKENDS = ("eager", *backends.names())  # the choices of every app's --backend
CACHE_HELP = ("compiled-model cache (default: $EDGEKIT_ARTIFACT_CACHE, else $EDGEKIT_CACHE/artifacts, else "
              "~/.cache/edgekit/artifacts on Linux; `edgekit paths` prints it)")


def add_backend_arguments(parser, backend_help: str, weights_help: str | None = None) -> None:
    """--backend (eager or a registered backend), --weights (when the app takes them) and --artifacts."""
    parser.add_argument("--backend", default="eager", choices=BACKENDS, help=backend_help)
    if weights_help:
        parser.add_argument("--weights", help=weights_help)
    parser.add_argument("--artifacts", help=CACHE_HELP)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise EdgekitError(f"unknown backend {backend!r}. Choose one of {', '.join(BACKENDS)}.")


def eager(module: torch.nn.Module) -> Runner:
    """The module in torch: floating inputs as float32 (integer ones, e.g. token ids, as they are); a lone output
    tensor is one output, a tuple or list of them several."""
    def run(*inputs: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(np.ascontiguousarray(x, np.float32) if _floating(x)
                                            else np.ascontiguousarray(x)) for x in inputs))
        return [y.numpy() for y in (out if isinstance(out, (tuple, list)) else (out,))]
    return run


def compiled(module: torch.nn.Module, example_inputs: tuple, name: str, backend: str, *, cache_dir=None,
             target: str = "host", code: tuple = (), files: tuple = (), recipe: str | None = None,
             progress: bool | None = None, **options) -> Runner:
    """The cached artifact of `module` (compiled now on a miss, with a spinner per step where `progress`, None: where
    the apps show progress bars, see edgekit.apps.progress) as a numpy callable, inputs cast to its dtypes.
    options: compile_model's (atol, rtol: the app's verify tolerance; quantize, calibration, ...); `code`, `files`
    and `recipe` go to the cache key (see edgekit.compile.cache.compiled); cache_dir None: paths.artifact_cache()."""
    return cache.numpy_runner(cache.load(module, example_inputs, name=name, backend=backend, target=target,
                                         code=code, files=files, recipe=recipe, cache_dir=cache_dir,
                                         progress=progress_enabled() if progress is None else progress,
                                         **options))  # edgekit's own entry, hashed once


def runner(module: torch.nn.Module, example_inputs: tuple, name: str, backend: str, **compile_options) -> Runner:
    """`eager(module)` for backend "eager", else `compiled(...)` with these options (after checking the name)."""
    check_backend(backend)
    if backend == "eager":
        return eager(module)
    return compiled(module, example_inputs, name, backend, **compile_options)


def _floating(x) -> bool:
    return np.issubdtype(np.asarray(x).dtype, np.floating)
