"""Host side of executorch_runner.cpp: input files in; output files and one JSON line out.

Each input goes as raw bytes (`in<i>.bin`) beside its dtype and shape (`in<i>.shape`, "float32 1,3,64,64"), so a
program exported with dynamic dims runs at the input's own size. An input that does not fit the program is refused
by the runner in `error.json`; `raise_refusal()` turns that into the user's error. Shared by the emulator and adb,
which differ only in how they move the files and start the binary.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

from .base import summarize

ERROR_FILE = "error.json"   # written by the runner when it refuses an input
MAX_ERROR_BYTES = 4096      # a refusal is one short line


def write_inputs(work: Path, inputs: list[np.ndarray]) -> list[Path]:
    """in<i>.bin and in<i>.shape for each input; the paths written (what a device needs pushed)."""
    paths = []
    for i, x in enumerate(inputs):
        x = np.asarray(x, order="C")
        data, shape = work / f"in{i}.bin", work / f"in{i}.shape"
        data.write_bytes(x.tobytes())
        shape.write_text(shape_line(x), encoding="ascii")
        paths += [data, shape]
    return paths


def shape_line(x: np.ndarray) -> str:
    """What in<i>.shape holds: "DTYPE D0,D1,..." (no dims for a scalar)."""
    return f"{x.dtype.name} {','.join(str(d) for d in x.shape)}\n"


def kernel_files(manifest) -> list[str]:
    """The payload files of the artifact's custom-kernel libraries (manifest backend_info.kernel_libraries), each
    loaded before the program; one the manifest does not list as a payload file is refused."""
    names = [entry.get("file") for entry in manifest.backend_info.get("kernel_libraries", [])]
    unlisted = [name for name in names if name not in manifest.files]
    if unlisted:
        raise EdgekitError(f"the manifest names kernel library {unlisted[0]!r}, which is not one of its payload files "
                           "(so it was never checksummed); the artifact is inconsistent. Recompile it.")
    return names


def args(pte: str, work: str, benchmark: dict | None, manifest) -> list[str]:
    """The runner's command line; the artifact (directory of `pte`) ships its custom-kernel libraries beside it."""
    warmup, iters = (benchmark.get("warmup", 3), benchmark.get("iters", 20)) if benchmark else (0, 1)
    folder = pte.rsplit("/", 1)[0]
    return [pte, work, str(warmup), str(iters), *(f"{folder}/{name}" for name in kernel_files(manifest))]


def read_result(work: Path, manifest, stdout: str, benchmark: dict | None) -> tuple[list[np.ndarray], dict | None]:
    report = json.loads(stdout.strip().splitlines()[-1])
    outputs = [np.fromfile(work / f"out{i}.bin", dtype=spec.dtype).reshape(shape)
               for i, (spec, shape) in enumerate(zip(manifest.outputs, report["shapes"]))]
    return outputs, (summarize(report["times_ms"]) if benchmark else None)


def raise_refusal(work: Path, manifest) -> None:
    """After the runner failed: raise the input it refused (work/error.json) as an EdgekitError naming the input,
    its shape and the program's bound; return when it refused none (the failure was something else)."""
    path = work / ERROR_FILE
    if not path.is_file():
        return
    try:
        err = json.loads(path.read_bytes()[:MAX_ERROR_BYTES].decode("ascii", errors="replace"))
        i, shape, dtype = int(err["input"]), list(err["shape"]), str(err["dtype"])
        bound, bound_dtype, reason = list(err["bound"]), str(err["bound_dtype"]), str(err["reason"])
    except (ValueError, KeyError, TypeError) as exc:
        raise EdgekitError(f"the ExecuTorch runner refused an input, but its report {ERROR_FILE} is unreadable "
                           f"({exc}); rebuild the runner (`edgekit device emulator setup`).") from None
    name = repr(manifest.inputs[i].name) if 0 <= i < len(manifest.inputs) else str(i)
    raise EdgekitError(f"input {name} ({dtype} {shape}) does not fit the artifact's ExecuTorch program: {reason}. "
                       f"Give a {bound_dtype} input of rank {len(bound)} with no dim above {bound} (only a dim "
                       "compiled with --dynamic may differ from the compiled size; `edgekit info ARTIFACT` lists the "
                       "ranges), or recompile for the size you need.") from None
