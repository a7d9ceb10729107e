"""The chimp networks as numpy-in, numpy-out callables: eager torch, or compiled for this host once and reused."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from edgekit.apps.chimp.app import ChimpApp, Runner
from edgekit.apps.chimp.model import ChimpModel
from edgekit.errors import EdgekitError

BACKENDS = ("eager", "executorch", "onnxruntime", "tvm")


def build_app(model: ChimpModel, backend: str = "eager", artifacts: Path = Path("out/chimp")) -> ChimpApp:
    detector, behavior = runners(model, backend, artifacts)
    return ChimpApp(detector, behavior, model.behaviors, model.detector.frames)


def runners(model: ChimpModel, backend: str, artifacts: Path) -> tuple[Runner, Runner]:
    """(detector, behavior head) on `backend` (see BACKENDS)."""
    if backend not in BACKENDS:
        raise EdgekitError(f"unknown backend {backend!r}. Choose one of {', '.join(BACKENDS)}.")
    networks = (model.detector, model.behavior)
    if backend == "eager":
        return tuple(eager(n) for n in networks)
    examples = model.example_inputs()
    tag = _weights_tag(model)  # new weights must not reuse artifacts compiled from old ones
    return tuple(compiled(n, examples[name], f"chimp_{name}-{tag}", backend, artifacts)
                 for name, n in zip(("detector", "behavior"), networks))


def eager(module: torch.nn.Module) -> Runner:
    def run(*inputs: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(np.ascontiguousarray(x, np.float32)) for x in inputs))
        return [y.numpy() for y in (out if isinstance(out, tuple) else (out,))]
    return run


def compiled(module: torch.nn.Module, example_inputs: tuple, name: str, backend: str, artifacts: Path) -> Runner:
    """Compile for this host on first use (artifacts/<name>-<backend>), then run the artifact."""
    import edgekit
    from edgekit.artifact import MANIFEST

    path = artifacts / f"{name}-{backend}"
    if not (path / MANIFEST).is_file():
        edgekit.compile_model(module, example_inputs, target="host", backend=backend, output=path, name=name,
                              atol=1e-3, rtol=1e-3)
    artifact = edgekit.load(path)
    return lambda *inputs: artifact.run([np.ascontiguousarray(x, np.float32) for x in inputs])


def _weights_tag(model: ChimpModel) -> str:
    digest = hashlib.sha1()
    for module in (model.detector, model.behavior):
        for value in module.state_dict().values():
            digest.update(value.numpy().tobytes())
    return digest.hexdigest()[:8]
