"""Running in the aarch64 emulator: artifacts, TVM library calls and a TVM RPC server inside the arm64 sysroot.

`run_artifact()` runs an aarch64 artifact inside it with the same runtime modules a device runs (staged
by `stage_package()`); `call_functions()` calls functions of aarch64 TVM libraries (the kernels' NEON
builds); `rpc_server()` serves TVM RPC from it. ExecuTorch runs through the C++ runner linked against the
wheel's libexecutorch*.so, as on a phone: its Python runtime would need libtorch on the device. Each runs
as root in a chroot, qemu-aarch64 running the guest's programs through binfmt_misc.

Building the sysroot and saying whether it is ready is runtimes/emulator_system.py's job.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from edgekit import backends
from edgekit.errors import EdgekitError

from . import executorch_runner
from .emulator_system import RUNNER, _tail, ensure_binfmt, require_sysroot

DEVICE_FILES = ("__init__.py", "errors.py", "artifact.py", "targets.py", "backends.py")  # edgekit/ on a device


# ---------------------------------------------------------------- chroot

def _chroot(root: Path) -> list[str]:
    """The command prefix that runs aarch64 programs inside the sysroot.

    A chroot with binfmt, not `qemu-aarch64-static -L SYSROOT`: with -L, onnxruntime crashed reading
    the host's /proc/cpuinfo and Python could not import packages from host paths (qemu 7.2).
    """
    ensure_binfmt()
    if os.geteuid() != 0:
        raise EdgekitError("cannot start the aarch64 emulator: it runs artifacts in a chroot, which needs root. "
                           "Run as root (sudo), or run the artifact on an aarch64 machine.")
    return ["chroot", str(root)]


def _emulate(root: Path, argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an aarch64 command inside the sysroot; raise a readable error when it fails."""
    settings = [f"{k}={v}" for k, v in (env or {}).items()]
    proc = subprocess.run([*_chroot(root), "/usr/bin/env", *settings, *argv], capture_output=True, text=True)
    if proc.returncode:
        raise EdgekitError(f"the aarch64 emulator failed running `{' '.join(argv[:3])} ...` (exit "
                           f"{proc.returncode}):\n{_tail(proc)}")
    return proc


# ---------------------------------------------------------------- running artifacts

def stage_package(dest: Path) -> None:
    """Copy edgekit's device-safe files (ground layer + runtimes) so the emulator runs the same code."""
    edgekit_src = Path(backends.__file__).parent  # the ground modules' folder (not the face: it imports compile)
    pkg = dest / "edgekit"
    (pkg / "runtimes").mkdir(parents=True)
    for name in DEVICE_FILES:
        shutil.copy2(edgekit_src / name, pkg / name)
    for src in Path(__file__).parent.glob("*.py"):
        shutil.copy2(src, pkg / "runtimes" / src.name)


def run_artifact(artifact_dir: Path, manifest, inputs: list[np.ndarray], *,
                 benchmark: dict | None = None) -> tuple[list[np.ndarray], dict | None]:
    """Run an aarch64 artifact inside the emulator; with benchmark={"warmup", "iters"} also time it there."""
    root = require_sysroot()
    with tempfile.TemporaryDirectory(prefix="edgekit-run-", dir=root / "tmp") as tmp:
        work = Path(tmp)
        guest = "/" + work.relative_to(root).as_posix()
        shutil.copytree(artifact_dir, work / "artifact")
        run = _run_executorch if backends.get(manifest.backend).emulator == "runner" else _run_python
        return run(root, work, guest, manifest, inputs, benchmark or {})


def _run_python(root, work: Path, guest: str, manifest, inputs, bench: dict):
    stage_package(work / "pkg")
    np.savez(work / "inputs.npz", **{f"in{i}": x for i, x in enumerate(inputs)})
    argv = ["python3", "-m", "edgekit.runtimes.emulator_runner", f"{guest}/artifact", f"{guest}/inputs.npz",
            f"{guest}/outputs.npz"]
    if bench:
        argv += ["--warmup", str(bench.get("warmup", 3)), "--iters", str(bench.get("iters", 20)),
                 "--stats", f"{guest}/stats.json"]
    _emulate(root, argv, env={"PYTHONPATH": f"{guest}/pkg", "PYTHONDONTWRITEBYTECODE": "1"})
    with np.load(work / "outputs.npz") as f:
        outputs = [f[f"out{i}"] for i in range(len(f.files))]
    stats = json.loads((work / "stats.json").read_text()) if bench else None
    return outputs, stats


def call_functions(calls: list[tuple[Path, str, list, list[int]]]) -> list[list[np.ndarray]]:
    """Call functions of aarch64 TVM libraries inside the emulator, all in one guest process.

    Each call is (library, symbol, args, output_indices): args are numpy arrays or Python numbers; the
    arrays at output_indices are returned after the call, one list per call (kernels write into argument
    buffers). One process for all calls: starting Python + TVM under emulation takes seconds.
    """
    root = require_sysroot()
    with tempfile.TemporaryDirectory(prefix="edgekit-call-", dir=root / "tmp") as tmp:
        work = Path(tmp)
        guest = "/" + work.relative_to(root).as_posix()
        stage_package(work / "pkg")
        libraries, arrays, spec = {}, {}, []
        for i, (library, symbol, args, outputs) in enumerate(calls):
            if library not in libraries:
                libraries[library] = f"lib{len(libraries)}.so"
                shutil.copy2(library, work / libraries[library])
            encoded = []
            for j, arg in enumerate(args):
                if isinstance(arg, np.ndarray):
                    arrays[f"c{i}a{j}"] = arg
                    encoded.append({"array": f"c{i}a{j}"})
                else:
                    encoded.append({"value": arg})
            spec.append({"library": f"{guest}/{libraries[library]}", "symbol": symbol, "args": encoded,
                         "outputs": list(outputs)})
        np.savez(work / "arrays.npz", **arrays)
        (work / "calls.json").write_text(json.dumps(spec))
        _emulate(root, ["python3", "-m", "edgekit.runtimes.emulator_call", f"{guest}/calls.json",
                        f"{guest}/arrays.npz", f"{guest}/results.npz"],
                 env={"PYTHONPATH": f"{guest}/pkg", "PYTHONDONTWRITEBYTECODE": "1"})
        with np.load(work / "results.npz") as f:
            return [[f[f"call{i}_arg{j}"] for j in outputs] for i, (_, _, _, outputs) in enumerate(calls)]


def _run_executorch(root, work: Path, guest: str, manifest, inputs, bench: dict):
    executorch_runner.write_inputs(work, inputs)
    proc = _emulate(root, [f"/{RUNNER}", *executorch_runner.args(f"{guest}/artifact/{manifest.entry}", guest, bench)])
    return executorch_runner.read_result(work, manifest, proc.stdout, bench)


# ---------------------------------------------------------------- TVM RPC server

@contextmanager
def rpc_server(port: int = 9090, timeout_s: float = 180):
    """A TVM RPC server inside the emulator on 127.0.0.1:PORT: proves the rpc:// path without a board."""
    root = require_sysroot()
    with tempfile.NamedTemporaryFile("w+", prefix="edgekit-rpc-", suffix=".log") as log:
        proc = subprocess.Popen([*_chroot(root), "python3", "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                                 "--port", str(port), "--port-end", str(port + 1)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for(lambda: "bind to" in Path(log.name).read_text(), proc, timeout_s, log.name)
            yield f"rpc://127.0.0.1:{port}"
        finally:
            with suppress(ProcessLookupError):  # its own session: the server and its worker processes
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def _wait_for(ready, proc: subprocess.Popen, timeout_s: float, log: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(Path(log).read_text().strip().splitlines()[-10:])
            why = f"exit {proc.returncode}" if proc.returncode is not None else f"no answer in {timeout_s:.0f} s"
            raise EdgekitError(f"the TVM RPC server in the emulator did not start ({why}):\n{tail}")
        time.sleep(0.2)

