"""The aarch64 emulator's system: building it and saying what state it is in.

The emulator is a Debian arm64 sysroot run through qemu-user, to prove ARM artifacts on x86_64.
`setup()` builds it once (debootstrap + the aarch64 wheels of the runtimes + a C++ ExecuTorch runner,
and qemu-aarch64 registered with binfmt_misc) under `edgekit.paths.emulator_dir()` (~/.cache/edgekit/emulator),
refreshing only the parts whose pins changed; `status()`, `is_ready()` and `require_sysroot()` describe
and check what is there. Running artifacts inside it is runtimes/emulator.py's job.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib.metadata import version
from pathlib import Path

from edgekit import backends, paths
from edgekit.errors import EdgekitError

SUITE = "bookworm"  # its python3 is 3.11, the version the aarch64 wheels are picked for
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
DEBIAN_PACKAGES = ("python3", "libstdc++6", "libgomp1")
WHEELS = tuple(dict.fromkeys(w for b in backends.REGISTRY.values() for w in b.device_wheels))  # host venv's versions
RPC_SERVER_WHEELS = {"cloudpickle": "3.1.3"}  # what TVM's RPC server needs beyond the runtime
PIP_AARCH64 = ("--platform", "manylinux_2_28_aarch64", "--only-binary=:all:", "--python-version", "3.11",
               "--implementation", "cp")
SITE = "usr/local/lib/python3.11/dist-packages"
EXECUTORCH = "opt/executorch"                       # lib/ and include/ from the executorch wheel
RUNNER = "opt/edgekit/bin/executorch_runner"           # guest path of the C++ runner
RUNNER_SOURCE = Path(__file__).with_name("executorch_runner.cpp")
HOST_TOOLS = {"debootstrap": "debootstrap", "dpkg-deb": "dpkg", "qemu-aarch64-static": "qemu-user-static",
              "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "chroot": "coreutils"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # shipped by qemu-user-static
SETUP_HINT = "Build it with `edgekit device emulator setup` (or `make emulator`), as root."


def emulator_dir() -> Path:
    """Where the emulator lives (EDGEKIT_EMULATOR_DIR, default <cache>/emulator): sysroot/, stamp.json, setup.lock."""
    return paths.emulator_dir()


def sysroot() -> Path:
    """The arm64 root file system the emulator chroots into (may not exist yet: see `require_sysroot()`)."""
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
    """Whether the sysroot exists and was built for exactly what `wanted()` asks."""
    stamp = _stamp()
    return sysroot().is_dir() and all(stamp.get(part) == want for part, want in wanted().items())


def status() -> dict:
    """What `edgekit device emulator status` prints: where it is, whether it is built and current, binfmt."""
    root = sysroot()
    stamp = _stamp()
    return {"dir": str(emulator_dir()), "built": root.is_dir(), "up_to_date": is_ready(),
            "binfmt_registered": _binfmt_registered(), "built_for": stamp.get("payload", {}),
            "wanted": wanted()["payload"], "setup_seconds": stamp.get("setup_seconds")}


def require_sysroot() -> Path:
    """The sysroot, once it is built, up to date and safe to run as root; else an EdgekitError saying the fix.

    Artifacts run in it as root (chroot), so a sysroot someone else could have changed is refused: one that
    is a symlink, or a directory not owned by the current user.
    """
    root = sysroot()
    if not root.is_symlink() and not root.is_dir():
        raise EdgekitError(f"the aarch64 emulator is not built ({root} missing). {SETUP_HINT}")
    _check_trusted(root)
    if not is_ready():
        raise EdgekitError(f"the aarch64 emulator in {emulator_dir()} was built for other runtime versions "
                           f"than this edgekit's. Rebuild it with `edgekit device emulator setup`.")
    if _stamp().get("hardened") != HARDENING:
        harden(root)
        _write_stamp({**_stamp(), "hardened": HARDENING})
    else:
        _harden_shared_dirs(root)  # cheap: the folders a guest could otherwise write or plant files in
    return root


HARDENING = 1  # version of harden(): a sysroot hardened by an older one is hardened again
GUEST_WRITABLE = ("tmp", "var/tmp", "var/lock", "run/lock", "dev/shm")  # 1777 in a Debian root file system


def harden(root: Path) -> None:
    """Make the sysroot safe for an unprivileged guest: nothing in it writable by the guest user (65534), the
    shared temp folders root's own (0711: the per-run work dirs in tmp/ stay reachable, nothing else is listed or
    created there), no setuid/setgid programs, no world-writable console."""
    _harden_shared_dirs(root)
    console = root / "dev/console"
    if console.exists() and not console.is_symlink():
        os.chmod(console, 0o600)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            safe = mode & ~(stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH)
            if safe != mode and os.path.relpath(path, root) not in GUEST_WRITABLE:
                os.chmod(path, safe)


def _harden_shared_dirs(root: Path) -> None:
    for rel in GUEST_WRITABLE:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            st = path.lstat()
            if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o711:
                os.chown(path, os.geteuid(), os.getegid(), follow_symlinks=False)
                os.chmod(path, 0o711)


def _check_trusted(root: Path) -> None:
    """Refuse a sysroot (or an emulator dir, EDGEKIT_EMULATOR_DIR included) that is a symlink, is not the current
    user's own directory, or that others may write into."""
    for path in (root.parent, root):
        _check_own_dir(path)


def _check_own_dir(root: Path) -> None:
    st = root.lstat()
    if stat.S_ISLNK(st.st_mode):
        why = f"is a symlink (to {os.readlink(root)})"
    elif not stat.S_ISDIR(st.st_mode):
        why = "is not a directory"
    elif st.st_uid != os.geteuid():
        why = f"is owned by uid {st.st_uid}, not by the current user (uid {os.geteuid()})"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        why = f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    else:
        return
    what = "sysroot" if root.name == "sysroot" else "folder"
    raise EdgekitError(f"refusing the aarch64 emulator {what} {root}: it {why}, and edgekit runs artifacts from it "
                       "with root's help (chroot). "
                       f"Remove it and rebuild it with `edgekit device emulator setup`, or point "
                       f"EDGEKIT_EMULATOR_DIR at a directory of your own.")


# ---------------------------------------------------------------- setup

def setup(force: bool = False) -> float:
    """Build or refresh the sysroot (only the parts whose pins changed); returns the seconds it took.

    Creates the emulator dir (mode 0o700) when missing. Holds an exclusive lock: a second builder (another
    test process, a second shell) waits and then finds the sysroot ready, instead of replacing it while the
    first one installs into it. An existing sysroot that is a symlink or not the current user's is refused.
    """
    _check_host()
    _make_private_dir(emulator_dir())
    with open(emulator_dir() / "setup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _setup_locked(force)


def _make_private_dir(path: Path) -> None:
    """Create PATH with mode 0o700 (whatever the umask) if it is missing; an existing one is left as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)


def _setup_locked(force: bool) -> float:
    from rich.console import Console

    console = Console(stderr=True)
    t0 = time.perf_counter()
    ensure_binfmt()
    want, have = wanted(), ({} if force else _stamp())
    root = sysroot()
    if root.is_symlink() or root.exists():
        _check_trusted(root)
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
    # binfmt is registered (setup's first step): chroot runs the aarch64 python3 through qemu
    harden(root)
    # as the guest user the artifacts run as (uid 65534): its imports must work without write access anywhere
    _check_call(["chroot", "--userspec=65534:65534", "--groups=65534", str(root), "/usr/bin/env", "-i",
                 "PATH=/usr/bin:/bin", "HOME=/", "python3", "-c", "import numpy, onnxruntime, tvm.runtime"],
                "the runtimes' import check inside the sysroot")


def _check_call(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise EdgekitError(f"emulator setup failed in {what} (exit {proc.returncode}):\n{_tail(proc)}")


def _tail(proc: subprocess.CompletedProcess, lines: int = 15) -> str:
    return "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-lines:])


# ---------------------------------------------------------------- binfmt

def _binfmt_registered() -> bool:
    entry = BINFMT / "qemu-aarch64"
    return entry.is_file() and entry.read_text().startswith("enabled")


def ensure_binfmt() -> None:
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
                           "(a container: `docker run --privileged`), or run the artifact on an aarch64 machine.") from None

