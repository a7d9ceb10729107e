"""Host side of executorch_runner.cpp: raw input files in; raw output files and one JSON line out.

Shared by the emulator and adb, which differ only in how they move the files and start the binary.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .base import summarize


def write_inputs(work: Path, inputs: list[np.ndarray]) -> list[Path]:
    paths = [work / f"in{i}.bin" for i in range(len(inputs))]
    for path, x in zip(paths, inputs):
        path.write_bytes(np.ascontiguousarray(x).tobytes())
    return paths


def args(pte: str, work: str, benchmark: dict | None) -> list[str]:
    warmup, iters = (benchmark.get("warmup", 3), benchmark.get("iters", 20)) if benchmark else (0, 1)
    return [pte, work, str(warmup), str(iters)]


def read_result(work: Path, manifest, stdout: str, benchmark: dict | None) -> tuple[list[np.ndarray], dict | None]:
    report = json.loads(stdout.strip().splitlines()[-1])
    outputs = [np.fromfile(work / f"out{i}.bin", dtype=spec.dtype).reshape(shape)
               for i, (spec, shape) in enumerate(zip(manifest.outputs, report["shapes"]))]
    return outputs, (summarize(report["times_ms"]) if benchmark else None)


