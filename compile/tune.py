"""`edgekit tune`: MetaSchedule tuning of a model's TVM lowering, stored where `edgekit compile --backend tvm` finds it.

    tune_model("conv_attention", target="host", trials=200)  # -> tuning/host/conv_attention/

The model is imported and fused exactly as compile/lower/tvm.py does (tvm_schedule.fuse), its kernels are extracted
(MetaSchedule's relax integration), tuned on this machine (LocalBuilder / LocalRunner), and the records go into a
JSON database: tuning/<target>/<model>/database_{workload,tuning_record}.json. A compile of the same model for the
same target applies them (MetaScheduleApplyDatabase) before edgekit's rules, records the database's sha256 in the
manifest's backend_info, and the compiled-model cache key covers the database files.

Two things in apache-tvm 0.27's tuning stack are worked around here:
* `import tvm.s_tir.tensor_intrin` (done by every TuneContext and by the default build function in every builder
  worker) parses all of TVM's tensor intrinsics in TVMScript: 50 s, 33 of them for CUDA's. On a two-core machine
  that exceeds LocalBuilder's 30 s timeout, so every build "fails". CPU tuning loads only the x86 and Arm ones.
* the XGBoost cost model needs xgboost, which edgekit does not depend on: the search uses the random cost model
  (evolutionary search still measures every candidate it keeps).
MetaSchedule itself needs apache-tvm-ffi 0.1.14 (0.1.15 segfaults serialising TIR: docs/tvm-ffi-segfault.md).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from edgekit import backends
from edgekit.backends import is_native
from edgekit.errors import EdgekitError
from edgekit.targets import get_target



def tune_model(model, example_inputs=None, *, target: str = "host", trials: int = 64, name: str | None = None,
               const_inputs=None, trials_per_iter: int = 16, output: Path | None = None, timeout_s: float = 60.0,
               all_kernels: bool = False, progress: bool = False) -> Path:
    """Tune `model` (as compile_model takes it) for `target` with about `trials` measured candidates in all, and
    write the database; returns its folder (`output`, default tuning/<target>/<model name>/). Records already in
    that folder are kept and added to (MetaSchedule keeps the best per kernel). Only kernels with a reduction
    (convolutions, matmuls, norms, pooling) are tuned unless `all_kernels`."""
    from .lower import tvm as tvm_lower
    from .lower import tvm_schedule
    from .pipeline import _as_source

    tgt = get_target(target)
    lowering = backends.check(tgt, "tvm")
    if not is_native(tgt) or tgt.cuda_arch:
        raise EdgekitError(f"edgekit tune measures candidates on this machine's CPU: target {tgt.name!r} is not "
                           "native to it (tune on the device itself, with --target host there).")
    if trials < 1:
        raise EdgekitError("--trials must be at least 1.")
    source, _ = _as_source(model, example_inputs, name, const_inputs, lowering)
    target_dict = tvm_lower.tvm_target(tgt)
    folder = Path(output) if output else tvm_schedule.tuning_dir(tgt.name, source.name)

    import tvm
    from tvm.s_tir import meta_schedule as ms

    from edgekit.kernels.attention.relax_pass import use_fused_attention

    load_cpu_intrinsics()
    mod = use_fused_attention(tvm_lower.import_relax(source, target_dict), target_dict)
    mod = tvm_schedule.fuse(mod, target_dict)
    cores = os.cpu_count() or 1
    ms_target = tvm.target.Target({**target_dict, "num-cores": cores})
    # edgekit's own kernels (attention, scan) stay as written; layout moves and elementwise kernels keep the rules
    # (parallel + vectorised copies: nothing for a search to find, and each would cost a round of trials)
    extracted = [t for t in ms.relax_integration.extract_tasks(mod, ms_target)
                 if not _hand_scheduled(t) and (all_kernels or _has_reduction(t))]
    if not extracted:
        raise EdgekitError(f"{source.name}: no kernels to tune in its TVM lowering.")
    # MetaSchedule's gradient scheduler gives every kernel one batch before any gets a second: batches small enough
    # for the budget to reach every kernel (fewer than 4 candidates a batch is not a search)
    per_iter = max(min(4, trials_per_iter), min(trials_per_iter, trials // len(extracted)))
    if progress:
        short = " (too few to reach every kernel: the rest keep the rules)" if per_iter * len(extracted) > trials else ""
        print(f"tuning {len(extracted)} kernels of {source.name} for {tgt.name}: {trials} trials, batches of "
              f"{per_iter}{short}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(folder))
    with tempfile.TemporaryDirectory(prefix="edgekit-tune-") as work:
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted, work_dir=work, strategy="evolutionary", num_threads=cores, seed=0)
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=work, max_trials_global=trials,
            num_trials_per_iter=min(per_iter, trials),
            builder=ms.builder.LocalBuilder(max_workers=cores, timeout_sec=timeout_s, initializer=_builder_init()),
            runner=ms.runner.LocalRunner(timeout_sec=timeout_s),
            database=database, cost_model="random", task_scheduler="gradient")
    if not database.get_all_tuning_records():
        shutil.rmtree(folder, ignore_errors=True)
        raise EdgekitError(f"{source.name}: MetaSchedule measured no candidate for any kernel (every build or run "
                           "failed); see the log above.")
    return folder


def summary(folder: Path) -> dict:
    """Per-workload best measured latency (seconds) in a tuning folder, and its digest."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from .lower import tvm_schedule

    db = ms.database.JSONDatabase(work_dir=str(folder), allow_missing=False)
    records = [r for r in db.get_all_tuning_records() if r.run_secs]
    best: dict[str, float] = {}
    for r in records:
        key = str(tvm_ffi.structural_hash(r.workload.mod))
        secs = sum(float(x) for x in r.run_secs) / len(r.run_secs)
        best[key] = min(best.get(key, secs), secs)
    return {"folder": str(folder), "records": len(records), "workloads": len(best),
            "best_total_s": sum(best.values()), "sha256": tvm_schedule.database_digest(folder)}


def _hand_scheduled(task) -> bool:
    funcs = [f for f in task.dispatched[0].functions.values() if hasattr(f, "attrs")]
    return any(f.attrs is not None and f.attrs.get("tirx.is_scheduled") for f in funcs)


def _has_reduction(task) -> bool:
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import get_root_block

    from .lower.tvm_schedule import _is_reduction

    sch = s_tir.Schedule(task.dispatched[0])
    found = []

    def visit(block_rvs):
        for block in block_rvs:
            found.append(_is_reduction(sch, block))
            visit(sch.get_child_blocks(block))

    visit(sch.get_child_blocks(get_root_block(sch)))
    return any(found)


def load_cpu_intrinsics() -> None:
    """tvm.s_tir.tensor_intrin with only its CPU (x86, Arm) intrinsics registered: a stand-in package module, so
    MetaSchedule's own `import tvm.s_tir.tensor_intrin` does not parse the CUDA/ROCm/Hexagon ones (50 s)."""
    _install_cpu_intrinsics()


def _builder_init():
    """The builder workers' initializer: a nested function, so that cloudpickle sends it by value and the worker
    imports nothing of edgekit's."""
    def init():
        import importlib
        import importlib.util
        import sys
        import types

        import tvm.s_tir

        name = "tvm.s_tir.tensor_intrin"
        if name in sys.modules:
            return
        spec = importlib.util.find_spec(name)
        stub = types.ModuleType(name)
        stub.__path__, stub.__spec__ = list(spec.submodule_search_locations), spec
        sys.modules[name] = stub
        tvm.s_tir.tensor_intrin = stub
        for sub in ("x86", "arm_cpu"):
            importlib.import_module(f"{name}.{sub}")

    return init


_install_cpu_intrinsics = _builder_init()
