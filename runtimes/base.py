"""The runtime protocol: one module per backend exposes `load` and `run`; timing is shared here.

Runtime modules import numpy and their own runtime library only (no torch, no compile), so the
same files run on a device or inside the aarch64 emulator.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np


class Runtime(Protocol):
    # payload: {file name: the bytes edgekit read once and verified}; load those, never reopen artifact_dir's files
    def load(self, artifact_dir: Path, manifest: Any, payload: dict[str, bytes] | None = None) -> Any: ...
    def run(self, handle: Any, inputs: list[np.ndarray]) -> list[np.ndarray]: ...


def benchmark(run, inputs: list[np.ndarray], warmup: int = 3, iters: int = 20) -> dict:
    """Wall-clock stats of `run(inputs)` in milliseconds after `warmup` untimed calls."""
    for _ in range(warmup):
        run(inputs)
    times = []
    for _ in range(max(1, iters)):
        t0 = time.perf_counter()
        run(inputs)
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times)


def summarize(times_ms: list[float]) -> dict:
    """The stats every timing in edgekit reports, wherever it was measured (host, emulator, RPC device)."""
    t = np.asarray(times_ms)
    return {"p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
            "min_ms": float(t.min()), "mean_ms": float(t.mean()), "iters": int(t.size)}


@contextmanager
def private_copy(data: bytes, suffix: str = ".so") -> Iterator[str]:
    """A path holding `data`: an exclusive file in a fresh 0700 directory of this process, removed on exit. For the
    loaders that take only a path (dlopen): they get the verified bytes, never the artifact's file again."""
    private = tempfile.mkdtemp(prefix="edgekit-lib-")  # mode 0700, ours
    try:
        fd, path = tempfile.mkstemp(suffix=suffix, dir=private)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        shutil.rmtree(private, ignore_errors=True)
