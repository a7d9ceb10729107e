"""The aarch64 emulator: a Debian arm64 sysroot run through qemu-user, to prove ARM artifacts on x86_64.

`setup()` builds it once (debootstrap + the aarch64 wheels of the runtimes + a C++ ExecuTorch
runner) under ~/.cache/edgekit/emulator; `run_artifact()` runs an artifact inside it with the same
runtime modules a device runs. ExecuTorch runs through the C++ runner linked against the wheel's
libexecutorch*.so, as on a phone: its Python runtime would need libtorch on the device.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager, suppress
from importlib.metadata import version
from pathlib import Path

import numpy as np

import edgekit
from edgekit import backends, paths
from edgekit.errors import EdgekitError

from . import executorch_runner

SUITE = "bookworm"  # its python3 is 3.11, the version the aarch64 wheels are picked for
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
DEBIAN_PACKAGES = ("python3", "libstdc++6", "libgomp1")
WHEELS = tuple(dict.fromkeys(w for b in backends.REGISTRY.values() for w in b.device_wheels))  # host venv's versions
RPC_SERVER_WHEELS = {"cloudpickle": "3.1.3"}  # what TVM's RPC server needs beyond the runtime
PIP_AARCH64 = ("--platform", "manylinux_2_28_aarch64", "--only-binary=:all:", "--python-version", "3.11",
               "--implementation", "cp")
SITE = "usr/local/lib/python3.11/dist-packages"
EXECUTORCH = "opt/executorch"                       # lib/ and include/ from the executorch wheel
RUNNER = "opt/edgekit/bin/executorch_runner"
RUNNER_SOURCE = Path(__file__).with_name("executorch_runner.cpp")
HOST_TOOLS = {"debootstrap": "debootstrap", "dpkg-deb": "dpkg", "qemu-aarch64-static": "qemu-user-static",
              "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "chroot": "coreutils"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # shipped by qemu-user-static
DEVICE_FILES = ("__init__.py", "errors.py", "artifact.py", "targets.py", "backends.py")  # edgekit/ on a device
SETUP_HINT = "Build it with `edgekit device emulator setup` (or `make emulator`), as root."


def emulator_dir() -> Path:
    return paths.emulator_dir()


def sysroot() -> Path:
    return emulator_dir() / "sysroot"


def wanted() -> dict:
    """What the sysroot must hold; a change in any part rebuilds that part."""
    return {
        "base": {"suite": SUITE, "packages": list(DEBIAN_PACKAGES), "build": "first stage + dpkg-deb"},
        "payload": {"wheels": {**{name: version(name) for name in WHEELS}, **RPC_SERVER_WHEELS},
                    "executorch": version("executorch"),
                    "runner": hashlib.sha256(RUNNER_SOURCE.read_bytes()).hexdigest()[:16]},
    }


def _stamp() -> dict:
    path = emulator_dir() / "stamp.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def is_ready() -> bool:
    stamp = _stamp()
    return sysroot().is_dir() and all(stamp.get(part) == want for part, want in wanted().items())


def status() -> dict:
    root = sysroot()
    stamp = _stamp()
    return {"dir": str(emulator_dir()), "built": root.is_dir(), "up_to_date": is_ready(),
            "binfmt_registered": _binfmt_registered(), "built_for": stamp.get("payload", {}),
            "wanted": wanted()["payload"], "setup_seconds": stamp.get("setup_seconds")}


# ---------------------------------------------------------------- setup

def setup(force: bool = False) -> float:
    """Build or refresh the sysroot (only the parts whose pins changed); returns the seconds it took.

    Holds an exclusive lock: a second builder (another test process, a second shell) waits and then
    finds the sysroot ready, instead of replacing it while the first one installs into it.
    """
    _check_host()
    emulator_dir().mkdir(parents=True, exist_ok=True)
    with open(emulator_dir() / "setup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _setup_locked(force)


def _setup_locked(force: bool) -> float:
    from rich.console import Console

    console = Console(stderr=True)
    t0 = time.perf_counter()
    _ensure_binfmt()
    want, have = wanted(), ({} if force else _stamp())
    root = sysroot()
    if is_ready() and not force:
        console.print(f"[green]emulator up to date[/]: {root}")
        return time.perf_counter() - t0
    if want["base"] != have.get("base") or not root.is_dir():
        _step(console, f"debootstrap Debian {SUITE} arm64 and unpack python3", _build_base, root)
        _write_stamp({"base": want["base"]})
    _step(console, "install the aarch64 wheels of " + ", ".join(want["payload"]["wheels"]),
          _install_wheels, root, want["payload"]["wheels"])
    _step(console, f"build the ExecuTorch C++ runner (executorch=={want['payload']['executorch']})",
          _build_runner, root, want["payload"]["executorch"])
    _step(console, "check the runtimes start inside the emulator", _smoke_test, root)
    seconds = time.perf_counter() - t0
    _write_stamp({**want, "setup_seconds": round(seconds, 1)})
    console.print(f"[green]emulator ready[/] in {seconds:.0f} s: {root}")
    return seconds


def _write_stamp(stamp: dict) -> None:
    (emulator_dir() / "stamp.json").write_text(json.dumps(stamp, indent=2))


def _step(console, what: str, fn, *args) -> None:
    t0 = time.perf_counter()
    with console.status(what):
        fn(*args)
    console.print(f"[green]✓[/] {what} [dim]({time.perf_counter() - t0:.0f} s)[/]")


def _check_host() -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise EdgekitError(f"the aarch64 emulator needs {', '.join(missing)}. Install with "
                           f"`apt-get install {' '.join(missing)}` (or run `make setup`).")
    if os.geteuid() != 0:
        raise EdgekitError("building the aarch64 emulator needs root (debootstrap and chroot). "
                           "Run `sudo edgekit device emulator setup`.")


def debian_mirror() -> str:
    """The Debian archive this machine's apt already uses (EDGEKIT_DEBIAN_MIRROR overrides)."""
    if os.environ.get("EDGEKIT_DEBIAN_MIRROR"):
        return os.environ["EDGEKIT_DEBIAN_MIRROR"]
    for path in APT_SOURCES:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            uris = words[1:] if words[:1] == ["URIs:"] else words[1:2] if words[:1] == ["deb"] else []
            for uri in uris:
                if uri.rstrip("/").endswith("/debian"):
                    return uri
    raise EdgekitError("no Debian archive found in /etc/apt sources to build the arm64 sysroot from; set "
                       "EDGEKIT_DEBIAN_MIRROR to a Debian mirror URL.")


def _build_base(root: Path) -> None:
    """debootstrap's first stage, then the .debs it fetched unpacked with dpkg-deb.

    The second stage would run every maintainer script under emulation (4-8 minutes on a 2-core
    host); the runtimes need only the files, and nothing ever runs dpkg or apt inside.
    """
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    _check_call(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
                 f"--include={','.join(DEBIAN_PACKAGES)}", SUITE, str(tmp), debian_mirror()], "debootstrap")
    for deb in sorted((tmp / "var/cache/apt/archives").glob("*.deb")):
        _check_call(["dpkg-deb", "--extract", str(deb), str(tmp)], f"dpkg-deb --extract {deb.name}")
        deb.unlink()
    _write_cpu_description(tmp)
    shutil.rmtree(root, ignore_errors=True)
    os.rename(tmp, root)


def _write_cpu_description(root: Path) -> None:
    """/proc/cpuinfo and the CPU lists as an arm64 Linux shows them (a Cortex-A76: 0x41/0xd0b).

    The runtimes' cpuinfo library reads them: with none it prints errors on every run, and the host's
    x86 ones crashed onnxruntime under qemu. qemu's default CPU implements the listed features.
    """
    n = os.cpu_count() or 1
    cpu = root / "sys/devices/system/cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    for name in ("possible", "present", "online"):
        (cpu / name).write_text(f"0-{n - 1}\n")
    features = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
    (root / "proc/cpuinfo").write_text("".join(
        f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n" for i in range(n)))


def _install_wheels(root: Path, wheels: dict) -> None:
    # pip on the host picks and unpacks the aarch64 wheels: nothing runs under emulation, nothing is
    # fetched from inside the sysroot.
    site = root / SITE
    shutil.rmtree(site, ignore_errors=True)
    _check_call([sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--target", str(site),
                 *PIP_AARCH64, *(f"{k}=={v}" for k, v in wheels.items())], "pip install (aarch64 wheels)")


def _build_runner(root: Path, et_version: str) -> None:
    et = root / EXECUTORCH
    shutil.rmtree(et, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        _check_call([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, *PIP_AARCH64,
                     f"executorch=={et_version}"], "pip download (executorch aarch64 wheel)")
        (wheel,) = Path(tmp).glob("executorch-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if member.startswith(("executorch/lib/", "executorch/include/")):
                    zf.extract(member, et.parent)  # -> opt/executorch/{lib,include}
    inc = et / "include"
    out = root / RUNNER
    out.parent.mkdir(parents=True, exist_ok=True)
    # Flags from the wheel's executorch-config.cmake; --no-as-needed keeps the registration-only
    # kernel and XNNPACK libraries linked although no symbol of theirs is referenced.
    _check_call(["aarch64-linux-gnu-g++", "-std=c++17", "-O2", "-Wno-deprecated-declarations",
                 "-DC10_USING_CUSTOM_GENERATED_MACROS", "-DET_EVENT_TRACER_ENABLED",
                 f"-I{inc}", f"-I{inc}/executorch/runtime/core/portable_type/c10", str(RUNNER_SOURCE),
                 "-o", str(out), f"-L{et}/lib", "-Wl,--no-as-needed", "-lexecutorch_kernels_optimized",
                 "-lexecutorch_kernels_quantized", "-lexecutorch_backend_xnnpack", "-Wl,--as-needed", "-lexecutorch",
                 f"-Wl,-rpath,/{EXECUTORCH}/lib"], "aarch64-linux-gnu-g++ (ExecuTorch runner)")


def _smoke_test(root: Path) -> None:
    _emulate(root, ["python3", "-c", "import numpy, onnxruntime, tvm.runtime"])


def _check_call(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise EdgekitError(f"emulator setup failed in {what} (exit {proc.returncode}):\n{_tail(proc)}")


def _tail(proc: subprocess.CompletedProcess, lines: int = 15) -> str:
    return "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-lines:])


# ---------------------------------------------------------------- binfmt + chroot

def _binfmt_registered() -> bool:
    entry = BINFMT / "qemu-aarch64"
    return entry.is_file() and entry.read_text().startswith("enabled")


def _ensure_binfmt() -> None:
    """Register qemu-aarch64 with the kernel (the F flag opens the interpreter now, so it works in the chroot)."""
    if _binfmt_registered():
        return
    try:
        if not (BINFMT / "register").exists():
            subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True,
                           capture_output=True)
        (BINFMT / "register").write_text(BINFMT_CONF.read_text().strip())
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EdgekitError(f"cannot start the aarch64 emulator: registering qemu-aarch64 with binfmt_misc "
                           f"is not permitted here ({exc}). Run as root on a host that allows binfmt_misc "
                           "(in a container: --privileged), or run the artifact on an aarch64 machine.") from None


def _chroot(root: Path) -> list[str]:
    """The command prefix that runs aarch64 programs inside the sysroot.

    A chroot with binfmt, not `qemu-aarch64-static -L SYSROOT`: with -L, onnxruntime crashed reading
    the host's /proc/cpuinfo and Python could not import packages from host paths (qemu 7.2).
    """
    _ensure_binfmt()
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


def require_sysroot() -> Path:
    if not sysroot().is_dir():
        raise EdgekitError(f"the aarch64 emulator is not built ({sysroot()} missing). {SETUP_HINT}")
    if not is_ready():
        raise EdgekitError(f"the aarch64 emulator in {emulator_dir()} was built for other runtime versions "
                           f"than this edgekit's. Rebuild it with `edgekit device emulator setup`.")
    return sysroot()


# ---------------------------------------------------------------- running artifacts

def stage_package(dest: Path) -> None:
    """Copy edgekit's device-safe files (ground layer + runtimes) so the emulator runs the same code."""
    edgekit_src = Path(edgekit.__file__).parent
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
