"""adb: run an ExecuTorch artifact on an Android phone: `adb push`, run the C++ runner, `adb pull`.

The phone needs an Android build of executorch_runner.cpp (NDK clang, linked against an Android
ExecuTorch build; the wheel's libraries are glibc, not bionic). Point EDGEKIT_ADB_RUNNER at it.
Not exercised in CI: there is no phone or NDK build here.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from edgekit.errors import EdgekitError

from . import executorch_runner

DEVICE_DIR = "/data/local/tmp/edgekit"


def run_adb(url: str, artifact_dir: Path, manifest, inputs: list[np.ndarray], *,
            benchmark: dict | None = None) -> tuple[list[np.ndarray], dict | None]:
    """adb://[SERIAL]: run (and with benchmark={"warmup", "iters"} time) an ExecuTorch artifact on the phone."""
    serial = parse_url(url)
    runner = _check(url, manifest)
    adb = ["adb", *(["-s", serial] if serial else [])]
    entry = safe_name(manifest.entry, "the manifest's entry file")
    remote = f"{DEVICE_DIR}/{safe_name(manifest.files[manifest.entry][:16], 'the entry checksum')}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        staged = executorch_runner.write_inputs(work, inputs)
        _shell(adb, "mkdir", "-p", remote)
        _adb(adb, "push", runner, f"{DEVICE_DIR}/executorch_runner")
        kernels = [safe_name(name, "a kernel library's file name")
                   for name in executorch_runner.kernel_files(manifest)]
        _adb(adb, "push", *(str(Path(artifact_dir) / name) for name in (entry, *kernels)), *map(str, staged), remote)
        argv = executorch_runner.args(f"{remote}/{entry}", remote, benchmark, manifest)
        _shell(adb, "chmod", "+x", f"{DEVICE_DIR}/executorch_runner")
        try:
            proc = _shell(adb, f"{DEVICE_DIR}/executorch_runner", *argv)
        except EdgekitError:
            with suppress(EdgekitError):  # there only when the runner refused an input
                _adb(adb, "pull", f"{remote}/{executorch_runner.ERROR_FILE}", str(work))
            executorch_runner.raise_refusal(work, manifest)
            raise
        for i in range(len(manifest.outputs)):
            _adb(adb, "pull", f"{remote}/out{i}.bin", str(work))
        return executorch_runner.read_result(work, manifest, proc.stdout, benchmark)


SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
SAFE_SERIAL = re.compile(r"[A-Za-z0-9._:-]+")  # USB serials, emulator-5554, HOST:PORT of adb over TCP


def parse_url(url: str) -> str:
    """The serial of adb://[SERIAL] ('' for the only attached phone); anything else is refused before adb runs."""
    parsed = urlparse(url)
    serial = parsed.netloc
    if (parsed.scheme != "adb" or parsed.path not in ("", "/") or parsed.query or parsed.fragment
            or (serial and not SAFE_SERIAL.fullmatch(serial))):
        raise EdgekitError(f"device {url!r} is not an adb address; expected adb:// (the one attached phone) or "
                           "adb://SERIAL with SERIAL as `adb devices` lists it (letters, digits, . _ : -).")
    return serial


def safe_name(name: str, what: str) -> str:
    """A file name that goes into a command on the phone: letters, digits, '.', '_' and '-' only, never '.' or '..'."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise EdgekitError(f"{what} {name!r} is not a plain file name (letters, digits, . _ - only); refusing to "
                           "put it into a command on the device. Recompile the artifact with edgekit.")
    return name


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


def _shell(adb: list[str], *argv: str) -> subprocess.CompletedProcess:
    """`adb shell` joins its arguments into one command line for the phone's shell: quote each one."""
    return _adb(adb, "shell", " ".join(shlex.quote(str(a)) for a in argv))


def _adb(adb: list[str], *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*adb, *args], capture_output=True, text=True)
    if proc.returncode:
        raise EdgekitError(f"`{' '.join([*adb, *args[:2]])} ...` failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc
