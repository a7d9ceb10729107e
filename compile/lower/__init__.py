"""One module per backend; each turns a Source into payload files in a staging directory:
`lower(source, target, out_dir, entry) -> Lowered` writes at least `out_dir/entry`, the file its runtime loads.

The backend registry (edgekit/backends.py) names each backend's lowerer module, entry file and toolchain."""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field


@dataclass
class Lowered:
    backend_info: dict = field(default_factory=dict)   # recorded in the manifest (delegation, device code, ...)


def versions(*dists: str) -> dict[str, str]:
    return {d: importlib.metadata.version(d) for d in dists}
