"""ExecuTorch: model.pte through executorch.runtime (the Python runtime links libtorch, so torch loads here)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load(artifact_dir: Path, manifest):
    from executorch.runtime import Runtime

    if manifest.backend_info.get("attention") == "llama.custom_sdpa":
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (registers its kernels)
    program = Runtime.get().load_program(Path(artifact_dir) / manifest.entry)
    return program.load_method("forward")


def run(handle, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    outputs = handle.execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
    return [o.detach().numpy().copy() for o in outputs]
