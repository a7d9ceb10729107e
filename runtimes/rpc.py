"""TVM RPC: run and time a TVM artifact on a board that serves TVM RPC, reached directly or through a tracker.

`rpc://HOST:PORT` is one board running `python3 -m tvm.exec.rpc_server`. `tracker://HOST:PORT/KEY` is a pool of
boards registered with TVM's RPC tracker under KEY (`edgekit device serve --tracker HOST:PORT --key KEY`): each
session asks the tracker for a free device of that key, waiting in its queue while all are busy. By convention the
key is the edgekit target the boards are (`android-arm64`, `rpi5`, ...), so a suite knows what to compile for them.

The .so is uploaded, loaded into a relax VM on the board, run there, and timed there with TVM's time_evaluator
(device-side clock, no network in the numbers). `bench_remote` also hands adb:// devices to adb.py, so
`edgekit bench --device` has one entry point.
"""
from __future__ import annotations

import re
import socket
import struct
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from edgekit.errors import EdgekitError

from .base import summarize

TRACKER_WAIT_S = 120   # how long a tracker:// request waits for a device of its key (registered, then free)
SESSION_TIMEOUT_S = 900  # a device session the server ends past this (a client that hung), freeing the device
SCHEMES = "rpc://HOST:PORT (one TVM RPC server) or tracker://HOST:PORT/KEY (a device of KEY from a TVM RPC tracker)"


def _host_port(parsed) -> tuple[str, int] | None:
    try:
        port = parsed.port  # ValueError for rpc://host:notaport or a port past 65535
    except ValueError:
        return None
    if (not parsed.hostname or not port or parsed.fragment or parsed.username or parsed.password
            or not re.fullmatch(r"[A-Za-z0-9._:-]+", parsed.hostname)):
        return None
    return parsed.hostname, port


def parse_url(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    address = _host_port(parsed)
    if parsed.scheme != "rpc" or address is None or parsed.path not in ("", "/") or parsed.query:
        raise EdgekitError(f"device {url!r} is not a TVM RPC address; expected rpc://HOST:PORT "
                           "(the host and port of `python3 -m tvm.exec.rpc_server` on the device).")
    return address


def parse_tracker_url(url: str) -> tuple[str, int, str]:
    """tracker://HOST:PORT/KEY[?wait=SECONDS] -> (host, port, key); KEY names the devices' target by convention."""
    parsed = urlparse(url)
    address = _host_port(parsed)
    key = parsed.path[1:]
    if (parsed.scheme != "tracker" or address is None or not re.fullmatch(r"[A-Za-z0-9._-]+", key)
            or not re.fullmatch(r"(wait=\d+(\.\d*)?)?", parsed.query)):
        raise EdgekitError(f"device {url!r} is not a TVM RPC tracker address; expected tracker://HOST:PORT/KEY "
                           "(the tracker of `edgekit device tracker` and the key its devices registered with, "
                           "by convention their target, e.g. tracker://127.0.0.1:9190/android-arm64), optionally "
                           f"with ?wait=SECONDS (how long to wait for a free device; default {TRACKER_WAIT_S}).")
    return (*address, key)


def tracker_wait(url: str) -> float:
    """How long a request for a device of `url` waits: its ?wait=SECONDS, else TRACKER_WAIT_S."""
    parse_tracker_url(url)
    query = urlparse(url).query
    return float(query.partition("=")[2]) if query else TRACKER_WAIT_S


def check_device(url: str) -> str:
    """The scheme of a TVM device address (rpc or tracker), after checking the whole address."""
    if url.startswith("tracker://"):
        parse_tracker_url(url)
        return "tracker"
    if url.startswith("rpc://"):
        parse_url(url)
        return "rpc"
    raise EdgekitError(f"device {url!r}: expected {SCHEMES}.")


# ---------------------------------------------------------------- the tracker

@contextmanager
def _tracker(host: str, port: int):
    """A socket that spoke TVM's tracker handshake; clear errors when nothing (or something else) answers."""
    from tvm.rpc import base

    try:
        sock = socket.create_connection((host, port), timeout=10)
    except OSError as exc:
        raise EdgekitError(f"cannot reach a TVM RPC tracker at {host}:{port} ({exc.strerror or exc}). Start one "
                           f"there: `edgekit device tracker --port {port}`.") from None
    with sock:
        try:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        except (OSError, struct.error):
            magic = None
        if magic != base.RPC_TRACKER_MAGIC:
            raise EdgekitError(f"{host}:{port} answered, but not as a TVM RPC tracker. Give the tracker's "
                               f"address (`edgekit device tracker`), or rpc://{host}:{port} for one RPC server.")
        yield sock


def _summary(sock) -> dict:
    from tvm.rpc import base

    base.sendjson(sock, [base.TrackerCode.SUMMARY])
    code, value = base.recvjson(sock)
    if code != base.TrackerCode.SUCCESS:
        raise EdgekitError(f"the TVM RPC tracker refused a summary ({value!r}); is it TVM {_tvm_version()}?")
    return value


def _tvm_version() -> str:
    import tvm

    return tvm.__version__


def devices(url: str, wait_s: float = 0) -> list[str]:
    """The servers registered with the tracker of `url` under its key, as HOST:PORT/KEY (busy ones included); with
    `wait_s` (None: the URL's ?wait=), waits that long for at least one, then says there is none."""
    host, port, key = parse_tracker_url(url)
    with _tracker(host, port) as sock:
        if wait_s == 0:
            return _servers(_summary(sock), key)
        return _registered(sock, url, time.monotonic() + (tracker_wait(url) if wait_s is None else wait_s))


def _servers(summary: dict, key: str) -> list[str]:
    return sorted(f"{info['addr'][0]}:{info['addr'][1]}/{key}" for info in summary["server_info"]
                  if info.get("key") == f"server:{key}")


def _registered(sock, url: str, deadline: float) -> list[str]:
    """The devices of the URL's key, once there is one; an error naming the keys there when none came in time."""
    host, port, key = parse_tracker_url(url)
    start = time.monotonic()
    while not (servers := _servers(summary := _summary(sock), key)):
        if time.monotonic() > deadline:
            keys = sorted({i["key"].split(":", 1)[1] for i in summary["server_info"] if ":" in i["key"]})
            raise EdgekitError(
                f"no device with key {key!r} registered at the TVM RPC tracker {host}:{port} within "
                f"{round(deadline - start, 1):g} s (keys there: {', '.join(keys) or 'none'}). Register one: `edgekit device "
                f"serve --tracker {host}:{port} --key {key}` on the board (or `edgekit device emulator rpc-server "
                f"--tracker {host}:{port} --key {key}`), or use one of those keys.")
        time.sleep(0.5)
    return servers


def request(url: str, wait_s: float | None = None, priority: int = 1):
    """(session, name): a device of the URL's key from its tracker, waiting up to `wait_s` seconds (default: the
    URL's ?wait=, else TRACKER_WAIT_S) for one to be registered and free; name is the server's HOST:PORT/KEY."""
    from tvm import rpc
    from tvm.rpc import base

    host, port, key = parse_tracker_url(url)
    wait_s = tracker_wait(url) if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    with _tracker(host, port) as sock:
        servers = _registered(sock, url, deadline)
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", priority])
        sock.settimeout(max(0.1, deadline - time.monotonic()))  # the tracker answers when a device is free
        try:
            code, value = base.recvjson(sock)
        except TimeoutError:
            raise EdgekitError(f"all {len(servers)} device(s) with key {key!r} at the TVM RPC tracker {host}:{port} "
                               f"stayed busy for {wait_s:g} s. Try again later, or register more devices "
                               f"under {key!r}.") from None
    if code != base.TrackerCode.SUCCESS:
        raise EdgekitError(f"the TVM RPC tracker {host}:{port} refused a device of {key!r} ({value!r}).")
    addr, dport, matchkey = value
    name = f"{addr}:{dport}/{key}"
    try:
        return rpc.connect(addr, dport, matchkey, session_timeout=SESSION_TIMEOUT_S), name
    except Exception as exc:  # tvm wraps socket errors in its own types
        raise EdgekitError(f"the tracker handed out {name}, but it did not answer ({str(exc).splitlines()[0]}); "
                           "is that board's RPC server still running?") from None


def open_session(url: str, wait_s: float | None = None):
    """(session, name) for rpc:// or tracker:// URLs; name says which device it is (HOST:PORT[/KEY])."""
    if check_device(url) == "tracker":
        return request(url, wait_s)
    host, port = parse_url(url)
    return connect(url), f"{host}:{port}"


@contextmanager
def tracker(host: str = "0.0.0.0", port: int = 9190):
    """TVM's RPC tracker on HOST:PORT (exactly that port), in its own process, for as long as the block runs."""
    try:
        from tvm.rpc.tracker import Tracker
    except ImportError as exc:  # tornado: in edgekit[compile]
        raise EdgekitError(f"TVM's RPC tracker needs a package that is not installed ({exc}). Install it: "
                           "`pip install 'edgekit[compile]'` (or `pip install tornado`).") from None
    try:
        server = Tracker(host, port=port, port_end=port + 1, silent=True)
    except Exception as exc:  # TVM raises its own error when the port is taken
        raise EdgekitError(f"cannot start a TVM RPC tracker on {host}:{port} ({str(exc).splitlines()[-1]}). "
                           "Choose another --port, or stop what is listening there.") from None
    try:
        yield f"{'127.0.0.1' if host == '0.0.0.0' else host}:{server.port}"
    finally:
        server.terminate()


def connect(url: str, timeout_s: int = 120):
    from tvm import rpc

    host, port = parse_url(url)
    try:
        return rpc.connect(host, port, session_timeout=timeout_s)
    except Exception as exc:  # tvm wraps socket errors in its own types
        raise EdgekitError(f"cannot reach a TVM RPC server at {host}:{port} ({str(exc).splitlines()[0]}). "
                           f"Start one on the device: `python3 -m tvm.exec.rpc_server --host 0.0.0.0 "
                           f"--port {port}`.") from None


def run_remote(url: str, artifact_dir: Path, manifest, inputs: list[np.ndarray], *,
               benchmark: dict | None = None) -> tuple[list[np.ndarray], dict | None]:
    """Upload, run and optionally time (benchmark={"warmup", "iters"}) a TVM artifact on the device of `url`
    (rpc:// or tracker://)."""
    _check_artifact(manifest)
    session, _ = open_session(url)
    return run_on(session, artifact_dir, manifest, inputs, benchmark=benchmark)


def _check_artifact(manifest) -> None:
    if manifest.backend != "tvm":
        raise EdgekitError(f"rpc:// and tracker:// devices run TVM artifacts; this one is {manifest.backend}. "
                           "Compile with --backend tvm, or use an adb:// device for ExecuTorch.")
    if not re.fullmatch(r"[0-9a-f]{16}", manifest.files[manifest.entry][:16]):
        raise EdgekitError(f"the manifest's checksum of {manifest.entry!r} is not a sha256 hex digest; refusing to "
                           "name an upload after it. Recompile the artifact with edgekit.")


def run_on(session, artifact_dir: Path, manifest, inputs: list[np.ndarray], *,
           benchmark: dict | None = None) -> tuple[list[np.ndarray], dict | None]:
    """`run_remote` on an open RPC session (`open_session`), which stays usable for the next artifact."""
    import tvm
    from tvm import relax

    _check_artifact(manifest)
    name = f"edgekit-{manifest.files[manifest.entry][:16]}.so"  # content-addressed: reruns replace nothing
    session.upload(str(Path(artifact_dir) / manifest.entry), target=name)
    device = session.cuda(0) if manifest.backend_info.get("device_code") else session.cpu(0)
    vm = relax.VirtualMachine(session.load_module(name), device)
    # Stateful calls: a remote VM cannot hand back a tuple object, but it can return its fields one by one
    vm.set_input("main", *[tvm.runtime.tensor(np.ascontiguousarray(x), device) for x in inputs])
    vm.invoke_stateful("main")
    outputs = [t.numpy() for t in _leaves(vm.get_outputs("main"))]
    if not benchmark:
        return outputs, None
    for _ in range(benchmark.get("warmup", 3)):
        vm.invoke_stateful("main")
    timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=max(1, benchmark.get("iters", 20)))
    return outputs, summarize([s * 1e3 for s in timer("main").results])


def _leaves(result) -> list:
    return [result] if hasattr(result, "numpy") else [t for item in result for t in _leaves(item)]


def bench_remote(artifact_dir: Path, url: str, warmup: int = 3, iters: int = 20) -> dict:
    """`edgekit bench DIR --device URL`, URL = rpc://HOST:PORT (TVM) or adb://[SERIAL] (ExecuTorch on a phone):
    checked artifact, example inputs, timings taken on the device."""
    from edgekit.artifact import load_verified

    from .adb import run_adb
    from .model import example_inputs

    if url.startswith("adb://"):
        manifest = load_verified(artifact_dir)
        _, stats = run_adb(url, artifact_dir, manifest, example_inputs(manifest),
                           benchmark={"warmup": warmup, "iters": iters})
        return {"model": manifest.model, "backend": manifest.backend, "target": manifest.target, "device": url,
                **stats}
    check_device(url)  # refuse a malformed address before anything else
    manifest = load_verified(artifact_dir)
    _check_artifact(manifest)
    session, name = open_session(url)
    _, stats = run_on(session, artifact_dir, manifest, example_inputs(manifest),
                      benchmark={"warmup": warmup, "iters": iters})
    return {"model": manifest.model, "backend": manifest.backend, "target": manifest.target, "device": name,
            **stats}


def serve(tracker_addr: str, key: str, host: str = "0.0.0.0", port: int = 9090):
    """A TVM RPC server on this machine (a board), registered with the tracker at HOST:PORT under `key`; returns
    TVM's server handle (`.terminate()` stops it)."""
    from tvm import rpc

    thost, tport, key = parse_tracker_url(f"tracker://{tracker_addr}/{key}")
    with _tracker(thost, tport):  # reachable and a tracker: TVM's server would retry silently otherwise
        pass
    try:
        return rpc.Server(host=host, port=port, port_end=port + 1, tracker_addr=(thost, tport), key=key, silent=True)
    except Exception as exc:  # TVM's own error when the port is taken
        raise EdgekitError(f"cannot serve TVM RPC on {host}:{port} ({str(exc).splitlines()[-1]}). Choose another "
                           "--port.") from None
