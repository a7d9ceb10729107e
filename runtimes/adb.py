"""adb: run an ExecuTorch artifact on an Android phone: `adb push`, run the C++ runner, `adb pull`.

The phone needs an Android build of executorch_runner.cpp (NDK clang, linked against an Android
ExecuTorch build; the wheel's libraries are glibc, not bionic). Point EDGEKIT_ADB_RUNNER at it.
Not exercised in CI: there is no phone or NDK build here.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from edgekit.errors import EdgekitError

from . import executorch_runner

DEVICE_DIR = "/data/local/tmp/edgekit"


def run_adb(url: str, artifact_dir: Path, manifest, inputs: list[np.ndarray], *,
            benchmark: dict | None = None) -> tuple[list[np.ndarray], dict | None]:
    """adb://[SERIAL]: run (and with benchmark={"warmup", "iters"} time) an ExecuTorch artifact on the phone."""
    runner = _check(url, manifest)
    serial = urlparse(url).netloc
    adb = ["adb", *(["-s", serial] if serial else [])]
    remote = f"{DEVICE_DIR}/{manifest.files[manifest.entry][:16]}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        staged = executorch_runner.write_inputs(work, inputs)
        _adb(adb, "shell", f"mkdir -p {remote}")
        _adb(adb, "push", runner, f"{DEVICE_DIR}/executorch_runner")
        _adb(adb, "push", str(Path(artifact_dir) / manifest.entry), *map(str, staged), remote)
        argv = executorch_runner.args(f"{remote}/{manifest.entry}", remote, benchmark)
        proc = _adb(adb, "shell", f"chmod +x {DEVICE_DIR}/executorch_runner && "
                                  f"{DEVICE_DIR}/executorch_runner {' '.join(argv)}")
        for i in range(len(manifest.outputs)):
            _adb(adb, "pull", f"{remote}/out{i}.bin", str(work))
        return executorch_runner.read_result(work, manifest, proc.stdout, benchmark)


def _check(url: str, manifest) -> str:
    if manifest.backend != "executorch":
        raise EdgekitError(f"adb:// devices run ExecuTorch artifacts; this one is {manifest.backend}. Compile "
                           "with --backend executorch, or use an rpc:// device for TVM.")
    runner = os.environ.get("EDGEKIT_ADB_RUNNER")
    if not runner or not Path(runner).is_file():
        raise EdgekitError("adb:// needs an Android build of runtimes/executorch_runner.cpp (NDK, linked against "
                           "an Android ExecuTorch build). Build it and set EDGEKIT_ADB_RUNNER to its path.")
    if shutil.which("adb") is None:
        raise EdgekitError("adb not found. Install it with `apt-get install adb` and connect the phone "
                           "with USB debugging on.")
    return runner


def _adb(adb: list[str], *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*adb, *args], capture_output=True, text=True)
    if proc.returncode:
        raise EdgekitError(f"`{' '.join([*adb, *args[:2]])} ...` failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc
