"""ONNX Runtime: model.onnx in an InferenceSession."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load(artifact_dir: Path, manifest):
    import onnxruntime as ort

    wanted = manifest.backend_info.get("providers", ["CPUExecutionProvider"])
    providers = [p for p in wanted if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(Path(artifact_dir) / manifest.entry), providers=providers)
    return session, [i.name for i in session.get_inputs()]


def run(handle, inputs: list[np.ndarray]) -> list[np.ndarray]:
    session, names = handle
    return list(session.run(None, dict(zip(names, inputs))))
