"""Where edgekit finds data and weights and keeps its caches: the one place for paths. Ground layer (device-safe).

| what | environment variable | default |
|---|---|---|
| data sets (Set5, videos, audio) | EDGEKIT_DATA | the config file's `data`, else <user data dir>/data |
| weights (CFSR, MediaPipe, ...) | EDGEKIT_WEIGHTS | the config file's `weights`, else <user data dir>/weights |
| every cache | EDGEKIT_CACHE | the platform's user cache dir (~/.cache/edgekit) |
| compiled-model cache | EDGEKIT_ARTIFACT_CACHE | <cache>/artifacts |
| kernel libraries | EDGEKIT_KERNEL_CACHE | <cache>/kernels |
| aarch64 emulator | EDGEKIT_EMULATOR_DIR | <cache>/emulator |
| the config file itself | EDGEKIT_CONFIG | <user config dir>/paths.json (~/.config/edgekit/paths.json) |

The config file records data and weights once (`edgekit paths --set data=DIR weights=DIR`; `make setup` records the
Makefile's), so an installed edgekit finds them without environment variables; a variable still wins over it, and a
command's own flag (--weights, --data, --artifacts where a command has one) over both. `edgekit paths` prints each
location and where it came from.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import platformdirs


__all__ = ["data_dir", "weights_dir", "cache_root", "artifact_cache", "kernel_cache", "emulator_dir", "table",
           "config_file", "record", "RECORDABLE"]

RECORDABLE = ("data", "weights")  # the locations the config file may hold


def _env_or(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def config_file() -> Path:
    return _env_or("EDGEKIT_CONFIG", platformdirs.user_config_path("edgekit") / "paths.json")


def _recorded() -> dict[str, str]:
    """The config file's {what: path}; {} when there is none. A damaged file is an error naming it and the fix."""
    from .errors import EdgekitError

    path = config_file()
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise EdgekitError(f"{path}: not a readable edgekit paths file ({exc}). Rewrite it with `edgekit paths "
                           "--set data=DIR weights=DIR`, or delete it.") from None
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise EdgekitError(f"{path}: expected a JSON object of paths. Rewrite it with `edgekit paths --set "
                           "data=DIR weights=DIR`, or delete it.")
    return {k: v for k, v in values.items() if k in RECORDABLE}


def _located(what: str, env: str) -> tuple[Path, str]:
    """(path, where it came from) for a recordable location: the variable, the config file, or the default."""
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser(), f"${env}"
    recorded = _recorded().get(what)
    if recorded:
        return Path(recorded).expanduser(), str(config_file())
    return platformdirs.user_data_path("edgekit") / what, "default"


def data_dir() -> Path:
    return _located("data", "EDGEKIT_DATA")[0]


def weights_dir() -> Path:
    return _located("weights", "EDGEKIT_WEIGHTS")[0]


def record(values: dict[str, str]) -> Path:
    """Write {what: folder} (what in RECORDABLE) into the config file, keeping what it held for the others; each
    folder must exist and is stored absolute. The file is replaced atomically."""
    from .errors import EdgekitError

    unknown = sorted(set(values) - set(RECORDABLE))
    if unknown:
        raise EdgekitError(f"--set {unknown[0]}=...: not a location edgekit records; choose from "
                           f"{', '.join(RECORDABLE)} (e.g. --set data=DIR weights=DIR).")
    resolved = {}
    for what, folder in values.items():
        path = Path(folder).expanduser().absolute()
        if not path.is_dir():
            raise EdgekitError(f"--set {what}={folder}: no such folder. Give an existing folder.")
        resolved[what] = str(path)
    target = config_file()
    merged = {**_recorded(), **resolved}
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(merged, indent=2) + "\n")
    os.replace(partial, target)
    return target


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
    """{what: {"path", "env", "source"}} for `edgekit paths`; source: the variable, the config file or "default"."""
    located = {what: _located(what, env) + (env,) for what, env in (("data", "EDGEKIT_DATA"),
                                                                      ("weights", "EDGEKIT_WEIGHTS"))}
    rows = {"cache": (cache_root, "EDGEKIT_CACHE"), "artifacts": (artifact_cache, "EDGEKIT_ARTIFACT_CACHE"),
            "kernels": (kernel_cache, "EDGEKIT_KERNEL_CACHE"), "emulator": (emulator_dir, "EDGEKIT_EMULATOR_DIR"),
            "config": (config_file, "EDGEKIT_CONFIG")}
    for what, (fn, env) in rows.items():
        located[what] = (fn(), f"${env}" if os.environ.get(env) else "default", env)
    return {what: {"path": str(path), "env": env, "source": source} for what, (path, source, env) in located.items()}
