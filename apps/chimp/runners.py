"""The chimp networks as numpy-in, numpy-out callables: eager torch, or compiled for this host once and reused
(edgekit's compiled-model cache, edgekit.apps.runners)."""
from __future__ import annotations

from edgekit.apps.chimp.app import ChimpApp, Runner
from edgekit.apps.chimp.model import ChimpModel
from edgekit.apps.runners import BACKENDS, check_backend, eager, runner

__all__ = ["BACKENDS", "VERIFY_TOLERANCE", "build_app", "eager", "runners"]  # eager: train.py
VERIFY_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}


def build_app(model: ChimpModel, backend: str = "eager", artifacts=None) -> ChimpApp:
    """artifacts: the compiled-model cache folder (None: edgekit.paths.artifact_cache())."""
    detector, behavior = runners(model, backend, artifacts)
    return ChimpApp(detector, behavior, model.behaviors, model.detector.frames)


def runners(model: ChimpModel, backend: str, artifacts=None) -> tuple[Runner, Runner]:
    """(detector, behavior head) on `backend` (see BACKENDS); compiled ones cached in `artifacts`."""
    check_backend(backend)
    examples = model.example_inputs()
    return tuple(runner(getattr(model, name), examples[name], f"chimp_{name}", backend, cache_dir=artifacts,
                        **VERIFY_TOLERANCE) for name in ("detector", "behavior"))
