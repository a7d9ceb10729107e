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
    from ..apps.spec import QuantRecipe
    from ..zoo import conv_attention

    module, inputs = conv_attention()
    import torch

    calib = [(torch.randn(*inputs[0].shape, generator=torch.Generator().manual_seed(i)),) for i in range(8)]
    cases = [ModelCase("conv_attention", module, inputs, int8=QuantRecipe(calib))]
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


def run(output: Path, pattern: str | None = None, iters: int = 20) -> dict:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ..errors import EdgekitError
    from .report import write_report

    os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
    import torch

    torch.set_num_threads(THREADS)
    keep = re.compile(pattern) if pattern else None
    rows, limits, seconds = [], {}, {}  # seconds: wall time per case, to see where a run's time goes
    start = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as bar:
        task = bar.add_task("starting", total=None)

        def progress(msg):
            bar.update(task, description=msg)

        for case in model_cases():
            if keep is None or keep.search(case.name):
                t0 = time.perf_counter()
                if isinstance(case, AppCase):
                    try:
                        rows += case.run(None, progress)
                    except EdgekitError as exc:  # a backend the app could not build: a row that says so
                        rows.append({"suite": "app", "case": case.name, "impl": "all", "precision": "fp32",
                                     "shape": None, "p50_ms": None, "p90_ms": None, "min_ms": None,
                                     "payload_bytes": None, "peer": None, "ratio_to_best_peer": None,
                                     "error": str(exc).splitlines()[0]})
                else:
                    rows += bench_model(case, None, iters, progress)
                seconds[case.name] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        kernel_rows, limits = bench_kernels([k for k in KERNEL_BENCHES if keep is None or keep.search(k)],
                                            progress)
        seconds["kernels"] = round(time.perf_counter() - t0, 1)
        rows += kernel_rows
    seconds["total"] = round(time.perf_counter() - start, 1)
    report = {"machine": machine(), "limits": limits, "seconds": seconds, "rows": rows}
    write_report(report, output)
    return report
