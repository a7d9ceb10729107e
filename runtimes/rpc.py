"""TVM RPC: run and time a TVM artifact on a board that runs `python3 -m tvm.exec.rpc_server`.

The .so is uploaded, loaded into a relax VM on the board, run there, and timed there with
TVM's time_evaluator (device-side clock, no network in the numbers). `bench_remote` also hands
adb:// devices to adb.py, so `edgekit bench --device` has one entry point.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from edgekit.errors import EdgekitError

from .base import summarize


def parse_url(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    try:
        port = parsed.port  # ValueError for rpc://host:notaport or a port past 65535
    except ValueError:
        port = None
    if (parsed.scheme != "rpc" or not parsed.hostname or not port or parsed.path not in ("", "/")
            or parsed.query or parsed.fragment or parsed.username or parsed.password
            or not re.fullmatch(r"[A-Za-z0-9._:-]+", parsed.hostname)):
        raise EdgekitError(f"device {url!r} is not a TVM RPC address; expected rpc://HOST:PORT "
                           "(the host and port of `python3 -m tvm.exec.rpc_server` on the device).")
    return parsed.hostname, port


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
    """Upload, run and optionally time (benchmark={"warmup", "iters"}) a TVM artifact on the device."""
    import tvm
    from tvm import relax

    if manifest.backend != "tvm":
        raise EdgekitError(f"rpc:// devices run TVM artifacts; this one is {manifest.backend}. Compile with "
                           "--backend tvm, or use an adb:// device for ExecuTorch.")
    digest = manifest.files[manifest.entry][:16]
    if not re.fullmatch(r"[0-9a-f]{16}", digest):
        raise EdgekitError(f"the manifest's checksum of {manifest.entry!r} is not a sha256 hex digest; refusing to "
                           "name an upload after it. Recompile the artifact with edgekit.")
    session = connect(url)
    name = f"edgekit-{digest}.so"  # content-addressed: reruns replace nothing
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

    manifest = load_verified(artifact_dir)
    run = run_adb if url.startswith("adb://") else run_remote
    if run is run_remote:
        parse_url(url)  # refuse a malformed address before anything else
    _, stats = run(url, artifact_dir, manifest, example_inputs(manifest), benchmark={"warmup": warmup, "iters": iters})
    return {"model": manifest.model, "backend": manifest.backend, "target": manifest.target, "device": url, **stats}
