"""ExecuTorch: model.pte through executorch.runtime (the Python runtime links libtorch, so torch loads here).

The program loads from the verified bytes edgekit hashed (`payload`), not from the path."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load(artifact_dir: Path, manifest, payload: dict[str, bytes] | None = None):
    from executorch.runtime import Runtime

    if manifest.backend_info.get("attention") == "llama.custom_sdpa":
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (registers its kernels)
    # from the verified bytes (load_program takes a buffer), not by reopening the path
    program = Runtime.get().load_program(payload[manifest.entry] if payload is not None
                                         else Path(artifact_dir) / manifest.entry)
    return program.load_method("forward"), program  # the program (and the buffer it reads) lives as long as the method


def run(handle, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    method, _program = handle
    outputs = method.execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
    return [o.detach().numpy().copy() for o in outputs]
