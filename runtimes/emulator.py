"""Running in the aarch64 emulator: artifacts, TVM library calls and a TVM RPC server inside the arm64 sysroot.

`run_artifact()` runs an aarch64 artifact inside it with the same runtime modules a device runs (staged
by `stage_package()`); `call_functions()` calls functions of aarch64 TVM libraries (the kernels' NEON
builds); `rpc_server()` serves TVM RPC from it. ExecuTorch runs through the C++ runner linked against the
wheel's libexecutorch*.so, as on a phone: its Python runtime would need libtorch on the device. Each runs in
a chroot as the unprivileged guest user (uid 65534, never root), qemu-aarch64 running the guest's programs
through binfmt_misc; the one folder it may write is its per-run work dir.

Building the sysroot and saying whether it is ready is runtimes/emulator_system.py's job.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from edgekit import backends
from edgekit.artifact import VerifiedArtifact, read_verified
from edgekit.errors import EdgekitError

from . import executorch_runner
from .emulator_system import RUNNER, _tail, ensure_binfmt, require_sysroot

DEVICE_FILES = ("__init__.py", "errors.py", "artifact.py", "targets.py", "backends.py")  # edgekit/ on a device


# ---------------------------------------------------------------- chroot

GUEST_UID = GUEST_GID = 65534  # nobody/nogroup: guest programs (artifact code included) never run as root


def _chroot(root: Path, user: bool = True) -> list[str]:
    """The command prefix that runs aarch64 programs inside the sysroot, as the unprivileged guest user.

    A chroot with binfmt, not `qemu-aarch64-static -L SYSROOT`: with -L, onnxruntime crashed reading
    the host's /proc/cpuinfo and Python could not import packages from host paths (qemu 7.2). chroot(2)
    needs root, but the guest program does not get it: --userspec drops to uid/gid 65534 (no supplementary
    groups) before it starts, so code in a hostile aarch64 library runs as nobody, confined to the sysroot,
    which nobody cannot write except in the per-run work dir it is given.
    """
    ensure_binfmt()
    if os.geteuid() != 0:
        raise EdgekitError("cannot start the aarch64 emulator: it runs artifacts in a chroot, which needs root. "
                           "Run as root (sudo), or run the artifact on an aarch64 machine.")
    if not user:
        return ["chroot", str(root)]
    return ["chroot", f"--userspec={GUEST_UID}:{GUEST_GID}", f"--groups={GUEST_GID}", str(root)]


def _emulate(root: Path, argv: list[str], env: dict | None = None, work: Path | None = None
             ) -> subprocess.CompletedProcess:
    """Run an aarch64 command inside the sysroot as the guest user; raise a readable error when it fails.

    `work` (host path; default: the /tmp/edgekit-* folder the arguments name) is the one directory the guest may
    write: it is handed to the guest user for the run and taken back afterwards, with anything but plain files and
    folders (symlinks the host could follow when it reads the results) removed.
    """
    work = work or _work_dir(root, [*argv, *(env or {}).values()])
    guest_work = "/" + work.relative_to(root).as_posix() if work else "/"
    if work:
        _lend(work)
    try:
        with subprocess.Popen([*_chroot(root), *_guest_env(guest_work, env), *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) as child:
            out, err = child.communicate()
            with suppress(ProcessLookupError):  # anything the guest left running in its process group
                os.killpg(child.pid, signal.SIGKILL)
        proc = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    finally:
        if work:
            _take_back(work)
    if proc.returncode:
        raise EdgekitError(f"the aarch64 emulator failed running `{' '.join(argv[:3])} ...` (exit "
                           f"{proc.returncode}):\n{_tail(proc)}")
    return proc


def run_in_guest(argv: list[str], work: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an aarch64 command inside the sysroot as the guest user, with `work` (a folder under the sysroot's /tmp,
    made by the caller) as the one folder it may write; an EdgekitError with the output's tail when it fails."""
    return _emulate(require_sysroot(), argv, env=env, work=work)


GUEST_ENV_PASS = ("OMP_NUM_THREADS", "TVM_NUM_THREADS", "LANG", "LC_ALL")  # nothing else of the host's environment


def _guest_env(home: str, env: dict | None) -> list[str]:
    """`env -i ...`: a clean environment for the guest (no host secrets), HOME and TMPDIR in its work dir."""
    passed = {k: os.environ[k] for k in GUEST_ENV_PASS if k in os.environ}
    settings = {"PATH": "/usr/local/bin:/usr/bin:/bin", **passed, "HOME": home, "TMPDIR": home, **(env or {})}
    return ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in settings.items())]


def _work_dir(root: Path, words) -> Path | None:
    """The host path of the guest's /tmp/edgekit-* work dir named in its arguments, if any."""
    for word in words:
        parts = str(word).split("/")
        if len(parts) > 2 and parts[0] == "" and parts[1] == "tmp" and parts[2].startswith("edgekit-"):
            candidate = root / "tmp" / parts[2]
            if candidate.is_dir() and not candidate.is_symlink():
                return candidate
    return None


def _lend(work: Path) -> None:
    """Give the work dir (not what is in it: the host's files there stay root's, readable) to the guest user."""
    os.chown(work, GUEST_UID, GUEST_GID, follow_symlinks=False)
    os.chmod(work, 0o700)


def _take_back(work: Path) -> None:
    """The work dir is root's again (a guest process still running can add nothing to it), minus every symlink,
    device, fifo or socket the guest made: the host reads results from here with ordinary opens."""
    os.chown(work, os.geteuid(), os.getegid(), follow_symlinks=False)
    os.chmod(work, 0o700)
    for dirpath, dirnames, filenames in os.walk(work, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                os.unlink(path)
                if name in dirnames:
                    dirnames.remove(name)


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


def run_artifact(artifact, manifest, inputs: list[np.ndarray], *,
                 benchmark: dict | None = None) -> tuple[list[np.ndarray], dict | None]:
    """Run an aarch64 artifact inside the emulator; with benchmark={"warmup", "iters"} also time it there.

    `artifact`: a VerifiedArtifact (edgekit.load passes the one it checked, trust policy included) or a directory
    (read and verified here). The guest gets the bytes the host verified, written into its private work dir, never a
    copy of the user's directory (which could have changed since)."""
    if not isinstance(artifact, VerifiedArtifact):
        artifact = read_verified(artifact)
    root = require_sysroot()
    with tempfile.TemporaryDirectory(prefix="edgekit-run-", dir=root / "tmp") as tmp:
        work = Path(tmp)
        guest = "/" + work.relative_to(root).as_posix()
        artifact.write_to(work / "artifact", private=False)  # work itself is private (0700)
        manifest = artifact.manifest
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
    try:
        proc = _emulate(root, [f"/{RUNNER}", *executorch_runner.args(f"{guest}/artifact/{manifest.entry}", guest,
                                                                      bench, manifest)])
    except EdgekitError:
        executorch_runner.raise_refusal(work, manifest)  # an input the program cannot take: say which and why
        raise
    return executorch_runner.read_result(work, manifest, proc.stdout, bench)


# ---------------------------------------------------------------- TVM RPC server

@contextmanager
def rpc_server(port: int = 9090, timeout_s: float = 180, tracker: str | None = None, key: str | None = None):
    """A TVM RPC server inside the emulator on 127.0.0.1:PORT: proves the rpc:// path without a board. With
    `tracker` (HOST:PORT) and `key` it registers with that TVM RPC tracker instead, a device of tracker://.../KEY."""
    register = ["--tracker", tracker, "--key", key] if tracker else []
    root = require_sysroot()
    with tempfile.NamedTemporaryFile("w+", prefix="edgekit-rpc-", suffix=".log") as log, \
            tempfile.TemporaryDirectory(prefix="edgekit-rpc-", dir=root / "tmp") as tmp:
        work = Path(tmp)  # the server's uploads land here (TMPDIR), the one folder its guest user may write
        guest = "/" + work.relative_to(root).as_posix()
        _lend(work)
        proc = subprocess.Popen([*_chroot(root), *_guest_env(guest, {"PYTHONDONTWRITEBYTECODE": "1"}), "python3",
                                 "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                                 "--port-end", str(port + 1), *register],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for(lambda: "bind to" in Path(log.name).read_text(), proc, timeout_s, log.name)
            # registered moments after it binds: `rpc.devices(url)` lists it as 127.0.0.1:PORT/KEY then
            yield f"tracker://{tracker}/{key}" if tracker else f"rpc://127.0.0.1:{port}"
        finally:
            with suppress(ProcessLookupError):  # its own session: the server and its worker processes
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            _take_back(work)


def _wait_for(ready, proc: subprocess.Popen, timeout_s: float, log: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(Path(log).read_text().strip().splitlines()[-10:])
            why = f"exit {proc.returncode}" if proc.returncode is not None else f"no answer in {timeout_s:.0f} s"
            raise EdgekitError(f"the TVM RPC server in the emulator did not start ({why}):\n{tail}")
        time.sleep(0.2)

