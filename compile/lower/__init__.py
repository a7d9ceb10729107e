"""One module per backend; each turns a Source into payload files in a staging directory."""
from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass, field


@dataclass
class Lowered:
    entry: str                                   # payload file the runtime loads
    backend_info: dict = field(default_factory=dict)
    toolchain: dict = field(default_factory=dict)


def lowerer(backend: str):
    """The backend's module; imported on demand so one backend's heavy deps never load for another."""
    return importlib.import_module(f"{__name__}.{backend}")


def versions(*dists: str) -> dict[str, str]:
    return {d: importlib.metadata.version(d) for d in dists}
