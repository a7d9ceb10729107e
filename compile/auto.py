"""`--backend auto`: compile with every backend the target supports, verify each, time each where it runs, and ship
the fastest verified artifact, its manifest recording every candidate (p50 or why it dropped out) and the choice.

Timings are taken where the artifact will run: on this machine for a native target, or on the device given as
`rpc://HOST:PORT` (TVM RPC) / `adb://[SERIAL]` (ExecuTorch on a phone). Emulated or cross-compiled targets without
a device are refused: emulator timings say nothing about a device. Every candidate is timed on the same seeded
inputs (`edgekit.runtimes.model.example_inputs`), `WARMUP` untimed runs then the p50 of `ITERS`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from edgekit import backends, trust
from edgekit.artifact import StagingDir, read_manifest
from edgekit.errors import EdgekitError
from edgekit.targets import get_target

AUTO = "auto"     # the --backend value that selects this
WARMUP = 3
ITERS = 20


def compile_auto(model, example_inputs=None, *, target: str = "host", output, device: str | None = None,
                 force: bool = False, sign=None, warmup: int = WARMUP, iters: int = ITERS, **options) -> Path:
    """Like `compile_model`, for every backend of `target`; returns the path of the shipped (fastest) artifact.
    `options` go to every candidate's `compile_model` (tolerances, quantization, name, ...). Nothing appears at
    `output` until the choice is made (and the artifact signed, with `sign`)."""
    from .pipeline import compile_model

    tgt = get_target(target)
    where = _where(tgt, device)
    if options.get("check") is False:
        raise EdgekitError("--backend auto ships the fastest *verified* artifact; it cannot be combined with "
                           "--no-verify. Drop --no-verify, or name one backend.")
    candidates = backends.for_target(tgt)
    results: dict[str, dict] = {}
    with StagingDir(output, force=force) as staging, \
            tempfile.TemporaryDirectory(prefix=f".{staging.output.name}.auto.", dir=staging.output.parent) as work:
        for name in candidates:
            art = Path(work) / name
            try:
                compile_model(model, example_inputs, target=tgt.name, backend=name, output=art, **options)
            except EdgekitError as exc:
                results[name] = {"status": "failed", "stage": "compile or verify", "reason": _first_line(exc)}
                continue
            except Exception as exc:  # a lowerer's own exception type: the candidate drops out, its reason kept
                results[name] = {"status": "failed", "stage": "compile or verify",
                                 "reason": f"{type(exc).__name__}: {_first_line(exc)}"}
                continue
            results[name] = _measure(art, device, warmup, iters)
        chosen = choose(results)
        manifest = read_manifest(Path(work) / chosen)
        for child in (Path(work) / chosen).iterdir():
            child.rename(staging.path / child.name)
        manifest.selection = {"chosen": chosen, "by": "lowest p50_ms", "measured_on": where, "warmup": warmup,
                              "iters": iters, "inputs": "edgekit.runtimes.model.example_inputs (seeded)",
                              "candidates": results}
        staging.seal(manifest)
        if sign is not None:
            trust.sign(staging.path, sign)
        return staging.commit()


def choose(results: dict[str, dict]) -> str:
    """The measured candidate with the lowest p50; none measured: an error naming each candidate's reason."""
    measured = {name: r["p50_ms"] for name, r in results.items() if r["status"] == "measured"}
    if not measured:
        why = "; ".join(f"{name}: {r['reason']}" for name, r in results.items()) or "no backend supports it"
        raise EdgekitError(f"--backend auto: no candidate compiled, verified and ran ({why}). Fix the first "
                           "failure, or name a backend with --backend.")
    return min(measured, key=measured.get)


def describe(artifact: Path) -> str:
    """One line per candidate of an auto-compiled artifact (its manifest's `selection`), the chosen one marked."""
    sel = read_manifest(artifact).selection
    lines = [f"backend auto: shipped {sel['chosen']} ({sel['by']}, {sel['iters']} runs on {sel['measured_on']})"]
    for name, r in sel["candidates"].items():
        mark = "*" if name == sel["chosen"] else " "
        got = (f"p50 {r['p50_ms']:.3f} ms" if r["status"] == "measured" else f"{r['status']}: {r['reason']}")
        lines.append(f"  {mark} {name:<12} {got}")
    return "\n".join(lines)


def _where(tgt, device: str | None) -> str:
    """Where the candidates are timed: 'host', or the device URL (checked before any compile)."""
    if device is None:
        if backends.is_native(tgt):
            return "host"
        raise EdgekitError(f"--backend auto times every candidate where it will run, and target {tgt.name!r} does "
                           "not run natively here (an aarch64 emulator or missing GPU would time the wrong machine). "
                           "Pass --device rpc://HOST:PORT (TVM RPC server on the device), tracker://HOST:PORT/KEY (a "
                           "device from a TVM RPC tracker) or adb://SERIAL "
                           "(ExecuTorch on a phone), or choose one backend with --backend.")
    _device_runner(device)
    return device


def _device_runner(device: str):
    """The function that runs (and times) an artifact on `device`, after checking its address."""
    from edgekit.runtimes import adb, rpc

    if device.startswith("adb://"):
        adb.parse_url(device)
        return adb.run_adb
    if device.startswith(("rpc://", "tracker://")):
        rpc.check_device(device)
        return rpc.run_remote
    raise EdgekitError(f"--device {device!r}: expected {rpc.SCHEMES}, or adb://[SERIAL] (ExecuTorch on a phone).")


def _measure(art: Path, device: str | None, warmup: int, iters: int) -> dict:
    """{'status': 'measured', 'p50_ms', ...} or {'status': 'not-measured', 'reason'} for one verified artifact."""
    from edgekit.runtimes.model import example_inputs, load

    manifest = read_manifest(art)
    inputs = example_inputs(manifest)
    try:
        if device is None:
            stats = load(art, trust=False).benchmark(warmup=warmup, iters=iters, inputs=inputs)
        else:
            _, stats = _device_runner(device)(device, art, manifest, inputs,
                                              benchmark={"warmup": warmup, "iters": iters})
    except EdgekitError as exc:  # e.g. a device that runs only one backend's artifacts
        return {"status": "not-measured", "stage": "measure", "reason": _first_line(exc),
                "verify": manifest.verify.get("status")}
    return {"status": "measured", **{k: stats[k] for k in ("p50_ms", "p90_ms", "min_ms")},
            "verify": manifest.verify.get("status"), "max_abs_err": manifest.verify.get("max_abs_err")}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]
