"""ONNX Runtime: model.onnx in an InferenceSession, built from the verified bytes (never reopened by path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load(artifact_dir: Path, manifest, payload: dict[str, bytes] | None = None):
    import onnxruntime as ort

    wanted = manifest.backend_info.get("providers", ["CPUExecutionProvider"])
    providers = [p for p in wanted if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
    model = payload[manifest.entry] if payload is not None else str(Path(artifact_dir) / manifest.entry)
    session = ort.InferenceSession(model, providers=providers)
    return session, [i.name for i in session.get_inputs()]


def run(handle, inputs: list[np.ndarray]) -> list[np.ndarray]:
    session, names = handle
    return list(session.run(None, dict(zip(names, inputs))))
