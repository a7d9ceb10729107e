"""The app registry: every subpackage of edgekit.apps whose `spec.py` exposes `SPEC: AppSpec`, found by scanning
the package's path (`edgekit.apps.__path__`). The CLI, the bench suite and the soak driver ask this module; no list of
apps is kept anywhere. Adding an app is one new folder (see apps/spec.py for the files it holds)."""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil

import edgekit.apps as _apps
from edgekit.errors import EdgekitError

from .spec import AppSpec

__all__ = ["APP_FILES", "UnknownApp", "apps", "names", "get", "clear_cache"]

# the sibling files every app folder holds (tests/test_app_registry.py checks the real apps)
APP_FILES = ("__init__.py", "spec.py", "model.py", "app.py", "demo.py", "eval.py", "bench.py", "info.json")

_cache: dict[tuple[str, ...], dict[str, AppSpec]] = {}


class UnknownApp(EdgekitError):
    """No app of that name; the message lists the valid ones."""

    def __init__(self, name: str, valid: tuple[str, ...]):
        super().__init__(f"unknown app {name!r}. Valid apps: {', '.join(valid) or 'none'}.")
        self.name, self.valid = name, valid


def _discover() -> dict[str, AppSpec]:
    found = []
    for info in pkgutil.iter_modules(_apps.__path__, prefix=f"{_apps.__name__}."):
        if not info.ispkg:
            continue
        module = f"{info.name}.spec"
        if importlib.util.find_spec(module) is None:  # a helper package, not an app
            continue
        spec = getattr(importlib.import_module(module), "SPEC", None)
        if not isinstance(spec, AppSpec):
            raise TypeError(f"{module}: SPEC must be an edgekit.apps.spec.AppSpec, got {type(spec).__name__}")
        if spec.package != info.name:
            raise TypeError(f"{module}: SPEC.package is {spec.package!r}, expected {info.name!r}")
        found.append(spec)
    found.sort(key=lambda s: (s.order, s.name))
    return {s.name: s for s in found}


def _registry() -> dict[str, AppSpec]:
    key = tuple(str(p) for p in _apps.__path__)  # a changed search path (e.g. a test's fake app) rescans
    if key not in _cache:
        _cache[key] = _discover()
    return _cache[key]


def clear_cache() -> None:
    _cache.clear()


def apps() -> tuple[AppSpec, ...]:
    """Every app, in listing order."""
    return tuple(_registry().values())


def names() -> tuple[str, ...]:
    return tuple(_registry())


def get(name: str) -> AppSpec:
    registry = _registry()
    if name not in registry:
        raise UnknownApp(name, tuple(registry))
    return registry[name]
