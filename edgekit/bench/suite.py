"""`make bench` / `edgekit bench --suite all`: every model on every host backend (fp32 and int8) and the
kernels, each beside its peers measured in the same run; writes reports/bench.{json,md} and PNG plots.

Cases come from the bundled model and from every app in the app registry (`AppSpec.bench_cases()`, i.e. the app's
bench.py: `cases() -> list[ModelCase | AppCase]`, types in edgekit.apps.spec): a ModelCase is one network compiled
and timed here on every registered backend; an AppCase is a whole app pipeline that times itself on every backend
and returns its rows.
"""
from __future__ import annotations

import importlib
import os
import platform
import re
import time
from pathlib import Path

from .. import backends
from ..apps import registry
from ..apps.spec import AppCase, ModelCase

THREADS = 2
KERNEL_BENCHES = ("attention", "scan")


def machine() -> dict:
    import importlib.metadata as md

    import cpuinfo

    info = cpuinfo.get_cpu_info()
    libs = ("torch", "executorch", "apache-tvm", "onnxruntime", "numpy")
    return {"cpu": info.get("brand_raw", platform.processor()), "cores": os.cpu_count(), "threads": THREADS,
            "arch": platform.machine(), "python": platform.python_version(),
            "versions": {lib: md.version(lib) for lib in libs}, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def model_cases() -> list[ModelCase | AppCase]:
    from ..apps.spec import DynamicBench, QuantRecipe
    from ..zoo import conv_attention

    module, inputs = conv_attention()
    import torch

    calib = [(torch.randn(*inputs[0].shape, generator=torch.Generator().manual_seed(i)),) for i in range(8)]
    dynamic = DynamicBench("input0:2=h:16..128,3=w:16..128", ({"h": 32, "w": 32}, {"h": 97, "w": 61}))
    cases = [ModelCase("conv_attention", module, inputs, int8=QuantRecipe(calib), dynamic=dynamic)]
    for app in registry.apps():
        cases.extend(app.bench_cases())
    return cases


def compiled_backends() -> tuple[str, ...]:
    """The backends a ModelCase is compiled with: every registered backend that builds for this host."""
    return backends.for_target("host")


def _time(fn, warmup: int, iters: int) -> dict:
    from ..runtimes.base import benchmark

    return benchmark(lambda _x: fn(), [], warmup, iters)


def bench_model(case: ModelCase, workdir: Path | None, iters: int, progress) -> list[dict]:
    """Rows of one network on every backend (fp32, and int8 with a recipe) beside its peers; artifacts come from the
    compiled-model cache (`workdir`: another cache folder; None: the shared one, as the apps use)."""
    from .. import load
    from ..compile import cache
    from ..errors import EdgekitError

    shape = [list(t.shape) for t in case.inputs]
    timings = {("eager", "fp32"): _time(lambda: case.module(*case.inputs), 2, iters)}
    sizes, failures = {}, {}
    for peer, fn in case.peers.items():
        timings[(peer, "fp32")] = _time(fn, 2, iters)
    variants = [("fp32", {})] + ([("int8", case.int8.options())] if case.int8 else [])
    compiled = compiled_backends()
    for backend in compiled:
        for precision, options in variants:
            progress(f"{case.name}: {backend} {precision}")
            try:
                art = cache.compiled(case.module, case.inputs, name=case.name, backend=backend, cache_dir=workdir,
                                     **case.tolerance.options(), **options)
            except EdgekitError as exc:  # e.g. an int8 artifact over its accuracy budget: a row that says so
                failures[(backend, precision)] = str(exc).splitlines()[0]
                continue
            model = load(art, trust=False)  # the compiled-model cache's own entry
            timings[(backend, precision)] = model.benchmark(warmup=2, iters=iters)
            sizes[(backend, precision)] = sum((art / f).stat().st_size for f in model.manifest.files)
    peers = {k: v for k, v in timings.items() if k[0] not in compiled}
    best_peer = min(peers, key=lambda k: peers[k]["p50_ms"])
    rows = []
    for (impl, precision), t in timings.items():
        row = {"suite": "models", "case": case.name, "impl": impl, "precision": precision, "shape": shape,
               **{k: t[k] for k in ("p50_ms", "p90_ms", "min_ms")}, "payload_bytes": sizes.get((impl, precision)),
               "peer": f"{best_peer[0]} {best_peer[1]}", "ratio_to_best_peer": t["p50_ms"] / peers[best_peer]["p50_ms"]}
        if case.work_unit:
            unit, amount = case.work_unit
            row[f"ms_per_{unit}"] = t["p50_ms"] / amount
        rows.append(row)
    rows += [{"suite": "models", "case": case.name, "impl": impl, "precision": precision, "shape": shape,
              "p50_ms": None, "p90_ms": None, "min_ms": None, "payload_bytes": None, "peer": None,
              "ratio_to_best_peer": None, "error": error} for (impl, precision), error in failures.items()]
    return rows


def bench_dynamic(case: ModelCase, workdir: Path | None, iters: int, progress) -> list[dict]:
    """Rows `suite: dynamic` of a case with a DynamicBench: per backend and size, "BACKEND dynamic" (the one artifact
    compiled with the case's --dynamic) and "BACKEND static" (compiled for that size), timed call by call in turn so
    that the machine's drift falls on both; the dynamic row's ratio is its p50 over the static one's."""
    import torch

    from .. import load
    from ..compile import cache, dynamic
    from ..errors import EdgekitError

    example = [t.numpy() for t in case.inputs]
    dims = dynamic.normalize(case.dynamic.dynamic, [f"input{i}" for i in range(len(example))])
    rows = []

    def row(impl, shape, stats=None, payload=None, ratio=None, error=None):
        return {"suite": "dynamic", "case": case.name, "impl": impl, "precision": "fp32", "shape": shape,
                **{k: (stats or {}).get(k) for k in ("p50_ms", "p90_ms", "min_ms")}, "payload_bytes": payload,
                "peer": impl.replace("dynamic", "static") if ratio else None, "ratio_to_best_peer": ratio,
                **({"error": error} if error else {})}

    def compiled(inputs, **options):
        art = cache.compiled(case.module, inputs, name=case.name, backend=backend, cache_dir=workdir,
                             **case.tolerance.options(), **options)
        model = load(art, trust=False)  # the compiled-model cache's own entry
        return model, sum((art / f).stat().st_size for f in model.manifest.files)

    for backend in compiled_backends():
        progress(f"{case.name}: {backend} dynamic")
        try:
            dyn, dyn_bytes = compiled(case.inputs, dynamic_shapes=case.dynamic.dynamic)
        except EdgekitError as exc:
            rows.append(row(f"{backend} dynamic", None, error=str(exc).splitlines()[0]))
            continue
        for size in case.dynamic.sizes:
            inputs = dynamic.inputs_at(dims, example, size)
            shape = [list(x.shape) for x in inputs]
            progress(f"{case.name}: {backend} static {dynamic.shape_text(inputs)}")
            try:
                static, static_bytes = compiled(tuple(torch.from_numpy(x) for x in inputs))
            except EdgekitError as exc:
                rows.append(row(f"{backend} static", shape, error=str(exc).splitlines()[0]))
                continue
            times = _alternating([dyn, static], inputs, iters)
            ratio = times[0]["p50_ms"] / times[1]["p50_ms"]
            rows += [row(f"{backend} dynamic", shape, times[0], dyn_bytes, ratio),
                     row(f"{backend} static", shape, times[1], static_bytes)]
    return rows


def _alternating(models, inputs, iters: int, warmup: int = 2) -> list[dict]:
    """Each model's timing stats of `run(inputs)`, the models called in turn on every iteration."""
    from ..runtimes.base import summarize

    for model in models:
        for _ in range(warmup):
            model.run(inputs)
    times = [[] for _ in models]
    for _ in range(max(1, iters)):
        for model, ts in zip(models, times):
            t0 = time.perf_counter()
            model.run(inputs)
            ts.append((time.perf_counter() - t0) * 1e3)
    return [summarize(ts) for ts in times]


DEVICE_BACKEND = "tvm"  # what rpc:// and tracker:// devices run


def bench_on_devices(cases: list[ModelCase], url: str, workdir: Path | None, iters: int, progress,
                     wait_s: float | None = None) -> list[dict]:
    """`--device tracker://HOST:PORT/KEY`: each case's TVM rows (fp32, and int8 with a recipe), compiled for the
    target the key names and timed on the pool's devices in parallel: one thread per device registered under the
    key, each holding one tracker session and taking the next artifact. Each row names its device (HOST:PORT/KEY)
    and when it ran there (`started`, `ended`: epoch seconds)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from ..runtimes import rpc

    target = device_target(url)
    rpc.devices(url, wait_s)  # at least one device of the key (or a clear error) before anything compiles
    jobs, rows = _compile_for_device(cases, target, workdir, progress)
    if not jobs:
        return rows
    queue, errors = deque(jobs), []
    sessions = min(len(rpc.devices(url, wait_s)), len(jobs))  # the pool as it is now, after the compiles
    with ThreadPoolExecutor(sessions) as threads:
        for got in [threads.submit(_device_worker, url, queue, iters, wait_s, errors, progress)
                    for _ in range(sessions)]:
            rows += got.result()
    if queue:  # no device took these: every request failed
        raise errors[0]
    return rows


def device_target(url: str) -> str:
    """The target a tracker key names (the convention: devices register under their target's name)."""
    from ..errors import EdgekitError
    from ..runtimes import rpc
    from ..targets import TARGETS

    *_, key = rpc.parse_tracker_url(url)
    if key not in TARGETS or DEVICE_BACKEND not in backends.for_target(key):
        raise EdgekitError(f"tracker key {key!r} names no target with {DEVICE_BACKEND}; the suite compiles for the "
                           f"target its devices' key names. Register them under one of: "
                           f"{', '.join(t for t in TARGETS if DEVICE_BACKEND in backends.for_target(t))}.")
    return key


def _compile_for_device(cases, target: str, workdir, progress) -> tuple[list[tuple], list[dict]]:
    """(jobs: (case, precision, artifact) to run, rows of variants that did not compile or verify)."""
    from ..compile import cache
    from ..errors import EdgekitError

    jobs, failed = [], []
    for case in cases:
        for precision, options in [("fp32", {})] + ([("int8", case.int8.options())] if case.int8 else []):
            progress(f"{case.name}: {DEVICE_BACKEND} {precision} for {target}")
            try:
                art = cache.compiled(case.module, case.inputs, name=case.name, backend=DEVICE_BACKEND, target=target,
                                     cache_dir=workdir, **case.tolerance.options(), **options)
            except EdgekitError as exc:
                failed.append(_device_row(case, precision, target, None, error=str(exc).splitlines()[0]))
                continue
            jobs.append((case, precision, art))
    return jobs, failed


def _device_worker(url: str, queue, iters: int, wait_s: float | None, errors: list, progress) -> list[dict]:
    """One device session from the tracker, running queued artifacts until none is left."""
    from ..errors import EdgekitError
    from ..runtimes import rpc

    try:
        session, name = rpc.request(url, wait_s)
    except EdgekitError as exc:  # e.g. a device busy elsewhere: the other threads may drain the queue
        errors.append(exc)
        return []
    rows = []
    while queue:
        try:
            case, precision, art = queue.popleft()
        except IndexError:  # another thread took the last one
            break
        progress(f"{case.name}: {DEVICE_BACKEND} {precision} on {name}")
        rows.append(_run_on_device(session, name, case, precision, art, iters))
    return rows


def _run_on_device(session, name: str, case: ModelCase, precision: str, art: Path, iters: int) -> dict:
    from ..artifact import load_verified
    from ..runtimes import rpc
    from ..runtimes.model import example_inputs

    manifest = load_verified(art)
    started = time.time()
    try:
        _, stats = rpc.run_on(session, art, manifest, example_inputs(manifest),
                              benchmark={"warmup": 2, "iters": iters})
    except Exception as exc:  # the device's own error types (TVM): a row that says so, the others still run
        return _device_row(case, precision, manifest.target, name, started=started,
                           error=f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}")
    payload = sum((art / f).stat().st_size for f in manifest.files)
    return _device_row(case, precision, manifest.target, name, stats, payload, started)


def _device_row(case, precision, target, device, stats=None, payload=None, started=None, error=None) -> dict:
    row = {"suite": "models", "case": case.name, "impl": DEVICE_BACKEND, "precision": precision,
           "shape": [list(t.shape) for t in case.inputs],
           **{k: (stats or {}).get(k) for k in ("p50_ms", "p90_ms", "min_ms")}, "payload_bytes": payload,
           "peer": None, "ratio_to_best_peer": None, "target": target, "device": device,
           "started": started, "ended": time.time() if started else None}
    return {**row, "error": error} if error else row


def bench_kernels(names, progress) -> tuple[list[dict], dict]:
    rows, limits = [], {}
    for name in names:
        progress(f"kernels: {name}")
        result = importlib.import_module(f"edgekit.kernels.{name}.bench").run(threads=THREADS)
        limits.update({k: v for k, v in result.items() if k != "rows"})
        for r in result["rows"]:
            case_rows = [x for x in result["rows"] if x["case"] == r["case"]]
            peers = [x for x in case_rows if not x["impl"].startswith("edgekit")]
            best = min(peers, key=lambda x: x["ms"])
            rows.append({"suite": f"kernel:{name}", "case": r["case"], "impl": r["impl"], "precision": "fp32",
                         "shape": r["shape"], "p50_ms": r["ms"], "min_ms": r.get("min_ms"),
                         # decode reads a KV cache: judged by bandwidth, not FLOP/s
                         "gflops": None if r["case"].startswith("decode") else r.get("gflops"),
                         "gbs": r.get("gbs", r.get("kv_gbs")),
                         "frac_peak": r.get("frac_peak"), "frac_bandwidth": r.get("frac_bandwidth"),
                         "peer": best["impl"], "ratio_to_best_peer": r["ms"] / best["ms"]})
    return rows, limits


def run(output: Path, pattern: str | None = None, iters: int = 20, device: str | None = None,
        cases: list | None = None, cache_dir: Path | None = None) -> dict:
    """The suite -> output/bench.{json,md} and plots. `device` (tracker://HOST:PORT/KEY): the model cases' TVM rows
    run on that pool instead (`bench_on_devices`); app pipelines and kernels time this machine, so they are left
    out and listed under "skipped". `cases`: instead of `model_cases()`; `cache_dir`: another artifact cache."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .report import write_report

    os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
    import torch

    torch.set_num_threads(THREADS)
    keep = re.compile(pattern) if pattern else None
    start = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as bar:
        task = bar.add_task("starting", total=None)

        def progress(msg):
            bar.update(task, description=msg)

        cases = [c for c in (model_cases() if cases is None else cases) if keep is None or keep.search(c.name)]
        if device:
            rows = bench_on_devices([c for c in cases if isinstance(c, ModelCase)], device, cache_dir, iters,
                                    progress)
            skipped = [c.name for c in cases if not isinstance(c, ModelCase)] + list(KERNEL_BENCHES)
            extra, limits, seconds = {"device": device, "skipped": skipped}, {}, {}
        else:
            kernels = [k for k in KERNEL_BENCHES if keep is None or keep.search(k)]
            rows, limits, seconds = _run_here(cases, kernels, cache_dir, iters, progress)
            extra = {}
    seconds["total"] = round(time.perf_counter() - start, 1)
    report = {"machine": machine(), **extra, "limits": limits, "seconds": seconds, "rows": rows}
    write_report(report, output)
    return report


def _run_here(cases, kernels, cache_dir, iters: int, progress) -> tuple[list[dict], dict, dict]:
    """Every case and kernel on this machine: (rows, measured limits, wall seconds per case)."""
    from ..errors import EdgekitError

    rows, seconds = [], {}  # seconds: wall time per case, to see where a run's time goes
    for case in cases:
        t0 = time.perf_counter()
        if isinstance(case, AppCase):
            try:
                rows += case.run(cache_dir, progress)
            except EdgekitError as exc:  # a backend the app could not build: a row that says so
                rows.append({"suite": "app", "case": case.name, "impl": "all", "precision": "fp32",
                             "shape": None, "p50_ms": None, "p90_ms": None, "min_ms": None,
                             "payload_bytes": None, "peer": None, "ratio_to_best_peer": None,
                             "error": str(exc).splitlines()[0]})
        else:
            rows += bench_model(case, cache_dir, iters, progress)
            if case.dynamic:
                rows += bench_dynamic(case, cache_dir, iters, progress)
        seconds[case.name] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    kernel_rows, limits = bench_kernels(kernels, progress)
    seconds["kernels"] = round(time.perf_counter() - t0, 1)
    return rows + kernel_rows, limits, seconds
