"""ONNX Runtime: model.onnx in an InferenceSession, built from the verified bytes (never reopened by path)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def load(artifact_dir: Path, manifest, payload: dict[str, bytes] | None = None):
    import onnxruntime as ort

    wanted = manifest.backend_info.get("providers", ["CPUExecutionProvider"])
    providers = [p for p in wanted if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
    model = payload[manifest.entry] if payload is not None else str(Path(artifact_dir) / manifest.entry)
    options = ort.SessionOptions()
    threads = _threads()
    if threads:  # the process's thread budget (edgekit's --threads sets it); else ONNX Runtime's own choice
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # errors only: its warnings (e.g. unused initializers) are not the user's to fix
    session = ort.InferenceSession(model, sess_options=options, providers=providers)
    return session, [i.name for i in session.get_inputs()]


def _threads() -> int:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() else 0


def run(handle, inputs: list[np.ndarray]) -> list[np.ndarray]:
    session, names = handle
    return list(session.run(None, dict(zip(names, inputs))))
