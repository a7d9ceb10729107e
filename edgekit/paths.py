"""Where edgekit finds data and weights and keeps its caches: the one place for paths. Ground layer (device-safe).

| what | environment variable | default |
|---|---|---|
| data sets (Set5, videos, audio) | EDGEKIT_DATA | <user data dir>/data |
| weights (CFSR, MediaPipe, ...) | EDGEKIT_WEIGHTS | <user data dir>/weights |
| every cache | EDGEKIT_CACHE | the platform's user cache dir (~/.cache/edgekit) |
| compiled-model cache | EDGEKIT_ARTIFACT_CACHE | <cache>/artifacts |
| kernel libraries | EDGEKIT_KERNEL_CACHE | <cache>/kernels |
| aarch64 emulator | EDGEKIT_EMULATOR_DIR | <cache>/emulator |

`<user data dir>` is platformdirs' user data directory for edgekit (~/.local/share/edgekit on Linux). Command-line
flags (--weights, --data, --artifacts) override these per call. `edgekit paths` prints them.
"""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs


__all__ = ["data_dir", "weights_dir", "cache_root", "artifact_cache", "kernel_cache", "emulator_dir", "table"]


def _env_or(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def data_dir() -> Path:
    return _env_or("EDGEKIT_DATA", platformdirs.user_data_path("edgekit") / "data")


def weights_dir() -> Path:
    return _env_or("EDGEKIT_WEIGHTS", platformdirs.user_data_path("edgekit") / "weights")


def data(*parts: str) -> Path:
    """A path under the data directory, e.g. data("sr", "Set5")."""
    return data_dir().joinpath(*parts)


def weights(*parts: str) -> Path:
    """A path under the weights directory, e.g. weights("cfsr", "CFSR_x4.pth")."""
    return weights_dir().joinpath(*parts)


def cache_root() -> Path:
    return _env_or("EDGEKIT_CACHE", platformdirs.user_cache_path("edgekit"))


def kernel_cache() -> Path:
    """The kernels (bottom layer, importing nothing of edgekit) compute the same in edgekit/kernels/cache.py; a test
    holds the two equal."""
    return _env_or("EDGEKIT_KERNEL_CACHE", cache_root() / "kernels")


def artifact_cache() -> Path:
    return _env_or("EDGEKIT_ARTIFACT_CACHE", cache_root() / "artifacts")


def emulator_dir() -> Path:
    return _env_or("EDGEKIT_EMULATOR_DIR", cache_root() / "emulator")


def table() -> dict[str, dict[str, str]]:
    """{what: {"path", "env"}} for `edgekit paths`."""
    rows = {"data": (data_dir, "EDGEKIT_DATA"), "weights": (weights_dir, "EDGEKIT_WEIGHTS"),
            "cache": (cache_root, "EDGEKIT_CACHE"), "artifacts": (artifact_cache, "EDGEKIT_ARTIFACT_CACHE"),
            "kernels": (kernel_cache, "EDGEKIT_KERNEL_CACHE"), "emulator": (emulator_dir, "EDGEKIT_EMULATOR_DIR")}
    return {what: {"path": str(fn()), "env": env} for what, (fn, env) in rows.items()}
