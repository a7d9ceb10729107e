"""CPU schedules for TVM: deterministic DLight-style rules for x86 and aarch64 (NEON), applied to every kernel.

tvm.compile's CPU path (relax's "default" pipeline) legalizes each op into its own naive scalar loop nest: no
fusion, no scheduling. Here the module is legalized and fused (FuseOps/FuseTIR, as relax/backend/cpu_generic does),
then each fused PrimFunc is rewritten by one rule:

* reductions (conv, matmul, pooling, channel means): tile the output so that a small block (rows x 2 vectors)
  accumulates in registers while the reduction loops run outside it; the outer spatial loops are fused and run
  in parallel; the fused epilogue (bias, activation, residual) is computed per tile while it is hot;
  a row that is no multiple of the vector (40, 20, 14, 7 pixels) takes a narrower register, else the output
  channels are vectorised instead, over operands transposed per call so that the channels are contiguous; a model
  whose convolutions mostly have such rows (MobileNet-style: BlazePose, the chimp detector) is moved to NHWC before
  legalization (channels_last), where the channels are the contiguous innermost axis throughout;
* everything else (elementwise, padding, layout moves): parallelise, vectorise the innermost loop. Elementwise
  producers are inlined into their consumers, except a transcendental one feeding a broadcast (computed once);
  float32 exp, sigmoid and softmax are legalized with TVM's polynomial fast_exp (vector code, not a libm call per
  lane).

Kernels the rule cannot handle keep TVM's loops. The rules are the default: they add well under a second to a
compile and need no stored records. A model tuned with `edgekit tune` (compile/tune.py: MetaSchedule) has a
database in tuning/<target>/<model>/; `schedule(..., database=)` applies its records first (MetaSchedule's
MetaScheduleApplyDatabase) and the rules take the kernels it has no record for. MetaSchedule needs
apache-tvm-ffi 0.1.14 (0.1.15 segfaults serialising TIR: docs/tvm-ffi-segfault.md).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import tvm
from tvm import relax, s_tir, tirx, topi
from tvm.relax.backend.cpu_generic import pipeline
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import get_root_block, normalize_prim_func
from tvm.s_tir.schedule import ScheduleError
from tvm.s_tir.schedule.analysis import is_output_block

_OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps leaves such calls alone
_MIN_LANES = 4  # narrowest vector the rule emits (a 128-bit register of fp32)
# Tile width along a symbolic innermost axis. The tail tile (width % tile columns) runs as scalar code over the whole
# tile under its bounds predicate, so its cost grows with the tile width: with 8 columns CFSR at 193x257 runs at 1.1x
# its static build, with 32 (two AVX-512 vectors) at 1.8-1.9x (one thread; docs/benchmarks.md).
_SYMBOLIC_WIDTH = 8


def schedule(mod, tvm_target: dict, database: Path | None = None):
    """Legalize, fuse and schedule the relax module for the CPU target `tvm_target` (TVM's JSON-dict form, the
    one the module is compiled for). Returns (module, pipeline description). CUDA targets get DLight's GPU rules,
    as TVM's CUDA pipeline applies them, each guarded (see _Guarded). `database`: a MetaSchedule JSON database
    folder (see tuning_dir); its records replace the rules for the kernels they match."""
    if tvm_target["kind"] == "cuda":
        return _schedule_cuda(mod, tvm.target.Target(tvm_target))
    mod = fuse(mod, tvm_target)
    layout = mod.attrs.get(LAYOUT_ATTR) if mod.attrs else None
    target = tvm.target.Target(tvm_target)
    lanes = tvm.target.codegen.llvm_get_vector_width(target) // 32
    tuned = ""
    if database is not None:
        from tvm.s_tir import meta_schedule as ms

        db = ms.database.JSONDatabase(work_dir=str(database), allow_missing=False)
        before = _scheduled(mod)
        with target, db:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        tuned = f"MetaSchedule database {database_digest(database)[:12]}: {_scheduled(mod) - before} tuned kernels; "
    with target:
        mod = dlight.ApplyDefaultSchedule(CpuRule(lanes))(mod)
    kernels = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    return mod, (f"{tuned}edgekit CPU rules ({lanes} fp32 lanes{', convolutions in ' + layout if layout else ''}): "
                 f"{_scheduled(mod)}/{len(kernels)} kernels scheduled, the rest default loops")


def _scheduled(mod) -> int:
    return sum(bool(f.attrs and f.attrs.get("tirx.is_scheduled"))
               for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))


def fuse(mod, tvm_target: dict):
    """The CPU module legalized and fused, before any schedule: the kernels `edgekit tune` extracts and tunes."""
    tvm_target = tvm.target.Target(tvm_target)
    mod = channels_last(mod, tvm.target.codegen.llvm_get_vector_width(tvm_target) // 32)
    passes = pipeline.library_dispatch_passes(tvm_target) + [
        relax.transform.LegalizeOps({"relax.nn.gelu": _gelu, "relax.exp": _fast(topi.fast_exp),
                                     "relax.sigmoid": _fast(lambda x: 1 / (1 + topi.fast_exp(-x))),
                                     "relax.nn.softmax": _fast(topi.nn.fast_softmax, "axis")}),
        relax.transform.AnnotateTIROpPattern(),
        _keep_kernels_unfused,
        # no FoldConstant (TVM's CPU legalize passes have it): it builds each constant subgraph with LLVM, one
        # at a time (40 s of CFSR's compile); unfolded, those weight reshapes fuse into the kernels that use them
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    with tvm_target:
        return tvm.transform.Sequential(passes)(mod)


LAYOUT_ATTR = "edgekit.conv_layout"  # set on a module whose convolutions channels_last moved to NHWC
CHANNELS_LAST_GAIN = 1.25  # the estimated vector efficiency NHWC must win by before the layout changes


def channels_last(mod, lanes: int):
    """The module's 2-D convolutions in NHWC (weights HWIO, transposed here once) when that vectorises them better.

    The rule vectorises a conv over its innermost output axis: in NCHW the image row, in NHWC the output channels.
    MobileNet-style networks have rows of 7, 14, 28 or 56 pixels (narrow or no vectors, BlazePose's convs ran at
    2-20 GFLOP/s) and channel counts that are multiples of 16; CFSR's 64-pixel tiles are the opposite. Each conv's
    FLOPs are weighted by the fraction of a full vector its axis fills; the layout that wins by CHANNELS_LAST_GAIN
    is used for the whole model (relax's ConvertLayout, which carries the layout through the elementwise ops, pools
    and resizes between convolutions, so the activations are transposed only where the model starts and ends)."""
    import numpy as np

    convs = _conv2d_shapes(mod)
    if not convs:
        return mod

    def efficiency(extent: int | None) -> float:  # the fraction of a vector register an axis of `extent` fills
        return 1.0 if extent is None else _vector_width(extent, lanes) / lanes or 1 / lanes

    nchw = sum(flops * min(1.0, efficiency(width)) for flops, width, _ in convs)
    nhwc = sum(flops * min(1.0, efficiency(channels)) for flops, _, channels in convs)
    if nhwc < CHANNELS_LAST_GAIN * nchw:
        return mod
    try:
        converted = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)
    except tvm.error.InternalError:  # an op ConvertLayout cannot carry: stay in NCHW
        return mod

    @relax.expr_functor.mutator
    class FoldTransposedConstants(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.permute_dims"
                    and isinstance(call.args[0], tvm.ir.GenericConst)):
                axes = None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
                return relax.const(np.ascontiguousarray(np.transpose(call.args[0].value.numpy(), axes)))
            return call

    for gv, fn in list(converted.functions.items()):
        if isinstance(fn, relax.Function):
            converted[gv] = FoldTransposedConstants(converted).visit_expr(fn)
    return relax.transform.DeadCodeElimination()(converted).with_attr(LAYOUT_ATTR, "NHWC")


def _conv2d_shapes(mod) -> list[tuple[int, int | None, int | None]]:
    """(FLOPs at the upper bound, output width, output channels) of each NCHW conv2d with a constant weight."""
    import numpy as np

    convs = []

    @relax.expr_functor.visitor
    class Convs(relax.PyExprVisitor):
        def visit_call_(self, call):
            super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
                return
            attrs, weight = call.attrs, call.args[1]
            if (attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW"
                    or not isinstance(weight, tvm.ir.GenericConst) or call.ty.shape is None):
                return
            n, o, h, w = (_extent(d) for d in call.ty.shape)
            taps = int(np.prod([int(d) for d in weight.ty.shape][1:]))  # inputs per group x kernel height x width
            size = 1
            for d in (n, o, h, w):
                size *= d if d is not None else 256  # a symbolic axis: weigh it as a mid-sized one
            convs.append((2 * size * taps, w, o))

    for fn in mod.functions.values():
        if isinstance(fn, relax.Function):
            Convs().visit_expr(fn)
    return convs


# MetaSchedule databases, one folder per target and model: tuning/<target>/<model>/database_{workload,tuning_record}
# .json, written by `edgekit tune` and applied by every TVM compile of that model for that target.
DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")


def tuning_root() -> Path:
    """$EDGEKIT_TUNING_DIR, else tuning/ at the top of the checkout (beside compile/)."""
    return Path(os.environ.get("EDGEKIT_TUNING_DIR") or Path(__file__).resolve().parents[2] / "tuning")


def tuning_dir(target_name: str, model_name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in model_name)[:80]
    return tuning_root() / target_name / safe


def find_database(target_name: str, model_name: str) -> Path | None:
    """The model's tuning folder if it holds a database with at least one record."""
    folder = tuning_dir(target_name, model_name)
    files = [folder / f for f in DATABASE_FILES]
    if all(f.is_file() for f in files) and files[1].stat().st_size > 0:
        return folder
    return None


def database_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in DATABASE_FILES:
        h.update(name.encode())
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()


def tuning_digest(target_name: str) -> str:
    """Digest of every database for the target (the compiled-model cache key: a changed database recompiles)."""
    h = hashlib.sha256()
    root = tuning_root() / target_name
    if root.is_dir():
        for file in sorted(root.rglob("*.json")):
            h.update(file.relative_to(root).as_posix().encode())
            h.update(file.read_bytes())
    return h.hexdigest()


def _schedule_cuda(mod, target):
    from tvm.relax.backend.cuda import pipeline as cuda

    rules = [_Guarded(r) for r in (dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(),
                                   dlight.gpu.GeneralReduction(), dlight.gpu.Fallback())]
    passes = cuda.library_dispatch_passes(target) + [
        relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
        relax.transform.FuseOps(), relax.transform.FuseTIR(), dlight.ApplyDefaultSchedule(*rules)]
    with target:
        mod = tvm.transform.Sequential(passes)(mod)
    declined = [f"{type(r.rule).__name__} failed on {r.failed} kernel(s), the next rule took them"
                for r in rules if r.failed]
    return mod, "DLight GPU rules" + (f" ({'; '.join(declined)})" if declined else "")


class _Guarded(dlight.ScheduleRule):
    """A DLight GPU rule that declines a kernel it fails on, so the next rule schedules it. DLight's GEMV rule
    asserts on loop extents it takes to be constants (`extent.value`) and raises AttributeError on the symbolic
    FloorDiv / Add extents of strided and depthwise convolutions (Samba-ASR's front end); Reduction or Fallback
    handle those kernels."""

    def __init__(self, rule):
        self.rule, self.failed = rule, 0

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except (AttributeError, AssertionError, ScheduleError):
            self.failed += 1
            return None


def _gelu(bb, call):
    """fp32 GELU with TVM's polynomial erf, which vectorises: libm's erff is one scalar call per element, and was
    40% of CFSR's run time once the convolutions were scheduled."""
    if call.args[0].ty.dtype != "float32":
        return tvm.ir.Op.get("relax.nn.gelu").get_attr("FLegalize")(bb, call)
    return bb.call_te(lambda x: x * (0.5 + 0.5 * topi.fast_erf(x * 0.7071067811865476)), call.args[0],
                      primfunc_name_hint="gelu")


def _fast(compute, *attrs):
    """A legalization for float32 that computes with `compute` (TVM's polynomial fast_exp, relative error ~4e-6),
    which vectorises: LLVM turns a vector exp into one libm call per lane (a Mamba decoder step's state update
    spent 0.34 of its 0.46 ms in expf). Other dtypes keep TVM's own legalization."""

    def legalize(bb, call):
        if call.args[0].ty.dtype != "float32":
            return call.op.get_attr("FLegalize")(bb, call)
        kwargs = {name: int(getattr(call.attrs, name)) for name in attrs}
        return bb.call_te(lambda x: compute(x, **kwargs), call.args[0],
                          primfunc_name_hint=call.op.name.split(".")[-1])

    return legalize


@tvm.transform.module_pass(opt_level=0, name="KeepKernelsUnfused")
def _keep_kernels_unfused(mod, _ctx):
    """edgekit's hand-written kernels (attention, scan) arrive marked scheduled; FuseOps must not merge them
    into new, unscheduled functions, so they are marked opaque."""
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and func.attrs and func.attrs.get("tirx.is_scheduled"):
            mod[gv] = func.with_attr("op_pattern", _OPAQUE)
    return mod


class CpuRule(dlight.ScheduleRule):
    """The rule; `lanes` is the fp32 vector width of the target (8 for AVX2, 16 for AVX-512, 4 for NEON)."""

    def __init__(self, lanes: int):
        self.lanes = lanes

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or normalize_prim_func(s_tir.Schedule(func)) is None:
            return None
        sch = s_tir.Schedule(func)
        _inline_elementwise(sch)
        for block in _root_blocks(sch):
            if _is_reduction(sch, block):
                _tile_reduction(sch, block, self.lanes)
        for block in _root_blocks(sch):  # blocks not placed inside a reduction's parallel tiles
            if not _in_parallel_loop(sch, block):
                _parallel_vectorize(sch, block, self.lanes)
        return sch


def _root_blocks(sch):
    return sch.get_child_blocks(get_root_block(sch))


def _in_parallel_loop(sch, block) -> bool:
    return any(sch.get(loop).kind == tirx.ForKind.PARALLEL for loop in sch.get_loops(block))


def _is_reduction(sch, block) -> bool:
    return any(_is_reduce_iv(iv) for iv in sch.get(block).iter_vars)


def _inline_elementwise(sch) -> None:
    """Inline elementwise chains into their consumers, except producers of reductions (padding, transposes):
    inlining those would recompute them inside the reduction loops; and producers with a transcendental call (exp,
    log, ...) whose consumer is broadcast over more elements: inlined, a per-channel softplus was recomputed in
    each of the 16 state lanes it feeds (a Mamba step's state update)."""
    changed = True
    while changed:
        changed = False
        for block in _root_blocks(sch):
            if (_is_reduction(sch, block) or is_output_block(sch, block)
                    or any(_is_reduction(sch, c) for c in sch.get_consumers(block))
                    or _costly_broadcast(sch, block)):
                continue
            try:
                sch.compute_inline(block)
            except ScheduleError:
                continue
            changed = True
            break


def _costly_broadcast(sch, block) -> bool:
    """The block calls a math function and a consumer iterates over more points than it (a broadcast)."""
    stmt = sch.get(block)
    if not isinstance(stmt.body, tirx.BufferStore) or not _has_math_call(stmt.body.value):
        return False
    points = _points(stmt)
    return points is not None and any((_points(sch.get(c)) or 0) > points for c in sch.get_consumers(block))


_CHEAP_CALLS = ("tirx.reinterpret", "tirx.if_then_else", "tirx.likely", "tirx.shift_left", "tirx.shift_right")


def _has_math_call(expr) -> bool:
    """`expr` calls an intrinsic other than bit moves and selects (exp, log, tanh, sqrt, ...)."""
    if isinstance(expr, tvm.ir.expr.Call):
        return not str(expr.op.name).startswith(_CHEAP_CALLS) or any(_has_math_call(a) for a in expr.args)
    children = [getattr(expr, f, None) for f in ("a", "b", "value", "condition", "true_value", "false_value")]
    return any(_has_math_call(c) for c in children if isinstance(c, tvm.ir.expr.Expr))


def _points(stmt) -> int | None:
    total = 1
    for iv in stmt.iter_vars:
        extent = _extent(iv.dom.extent)
        if extent is None:
            return None
        total *= extent
    return total


def _tile_reduction(sch, block, lanes: int) -> None:
    """Register-tiled reduction with its consumers computed per tile; parallel-only when it cannot vectorise.
    A symbolic extent is tiled by a constant with a tail (see _split)."""
    ivs = sch.get(block).iter_vars
    loops = sch.get_loops(block)
    if len(loops) != len(ivs):
        return
    kinds = ["R" if _is_reduce_iv(iv) else "S" for iv in ivs]
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    reduce = [i for i, k in enumerate(kinds) if k == "R"]
    extents = [_extent(iv.dom.extent) for iv in ivs]
    vec = spatial[-1] if spatial else None
    width = _vector_width(extents[vec], lanes) if vec is not None else 0
    if vec is not None and not width and extents[vec] is None:
        # a symbolic innermost axis (an image's width): a narrow vector with a peeled tail, still contiguous; moving a
        # constant axis (channels) innermost instead would scatter every accumulator store across the image
        width = min(2 * lanes, _SYMBOLIC_WIDTH)
    elif vec is not None and not width:
        vec, width = _transposed_vector_axis(sch, block, spatial, extents, lanes) or (vec, 0)
        ivs = sch.get(block).iter_vars
    if not width or not _contiguous(sch.get(block), ivs[vec].var):
        if spatial:
            sch.reorder(*[loops[i] for i in spatial + reduce])
            sch.parallel(sch.fuse(*[loops[i] for i in spatial]))
        return
    row, reuses = _row_axis(sch.get(block), ivs, spatial, vec, extents)
    vec_o, vec_i = sch.split(loops[vec], [None, width])
    tiled = {vec: vec_o}
    factors = {vec: width}
    inner = [vec_i]
    if row is not None:
        rows = _rows(width, lanes)
        factors[row] = rows if extents[row] is None else _largest_divisor(extents[row], rows)
        row_o, row_i = sch.split(loops[row], [None, factors[row]])
        tiled[row] = row_o
        inner.insert(0, row_i)
    outer = [tiled.get(i, loops[i]) for i in spatial]
    if reuses:  # row blocks innermost: consecutive tiles reuse the vector operand (a conv's input pixels) in cache
        outer.append(outer.pop(spatial.index(row)))
    tails = [tiled[i] for i in (vec, row) if i is not None and extents[i] is None]
    anchor = _parallel_tiles(sch, outer, tails, [loops[i] for i in reduce], inner)
    consumers = [sch.cache_write(block, 0, "local")] if is_output_block(sch, block) else sch.get_consumers(block)
    for consumer in consumers:
        try:
            sch.reverse_compute_at(consumer, anchor, preserve_unit_loops=True)
        except ScheduleError:
            continue  # stays at the root and is scheduled as elementwise
        _vectorize_innermost(sch, consumer, lanes)
    if tails:
        _tile_accumulator(sch, block, {ivs[i].var: f for i, f in factors.items() if extents[i] is None})
    if row is not None:
        sch.unroll(row_i)
    sch.vectorize(vec_i)
    sch.decompose_reduction(block, loops[reduce[0]])  # the init copies the unrolled, vectorised tile loops
    for loop in tails:
        _partition_tail(sch, loop)


def _tile_accumulator(sch, block, factors: dict) -> None:
    """Store the accumulator of a reduction tiled over symbolic extents as tiles: each dimension indexed by a tiled
    block iter (`factors`: iter var -> tile size) becomes (index // size, index % size). The tail tile's bounds
    predicate stays, but each tile now lies inside the buffer, so TVM's buffer compaction shrinks the accumulator
    to one constant tile per thread, kept in registers (before: a whole image plane per thread, in memory)."""
    from tvm.tirx import IndexMap

    region = sch.get(block).writes[0].region
    split = [next((f for var, f in factors.items() if _uses(r.min, var)), None) for r in region]
    if not any(split):
        return

    def tiles(*index):
        out = []
        for i, f in zip(index, split):
            out += [i // f, i % f] if f else [i]
        return out

    sch.transform_layout(block, ("write", 0), IndexMap.from_func(tiles, ndim=len(region)),
                         assume_injective_transform=True)


def _parallel_tiles(sch, outer, tails, reduce, inner):
    """Order the tile loops (outer, reduction, in-register) and parallelise the outer ones; returns the innermost
    outer loop, where the epilogue is computed. Constant extents: all outer loops fused into one parallel loop.
    The outer loops of symbolic tiles (`tails`) stay unfused, innermost, so that TVM's loop partitioning can
    separate their predicate-free tiles from the tail; one of them is the parallel loop when the other outer
    loops have too few iterations to share among threads."""
    rest = [loop for loop in outer if loop not in tails]
    if tails and _few(sch, rest):
        order = [*tails, *rest]
        sch.reorder(*order, *reduce, *inner)
        sch.parallel(tails[0])
        return (rest or tails)[-1]
    sch.reorder(*rest, *tails, *reduce, *inner)
    fused = sch.fuse(*rest) if rest else None
    if fused is not None:
        sch.parallel(fused)
    return tails[-1] if tails else fused


def _few(sch, loops, minimum: int = 16) -> bool:
    """The loops' iterations are a known number under `minimum` (too few to keep the cores busy)."""
    total = 1
    for loop in loops:
        extent = sch.get(loop).extent
        if not _const(extent):
            return False
        total *= int(extent)
    return total < minimum


def _partition_tail(sch, loop) -> None:
    """Ask TVM's LoopPartition to peel the tail tile of a symbolic loop, so the other tiles run without the
    bounds predicate and vectorise (the tail keeps its predicate and runs scalar)."""
    sch.annotate(loop, "pragma_loop_partition_hint", 1)


def _vectorize_innermost(sch, block, lanes: int) -> None:
    """Vectorise a block's innermost loop: whole when constant, else by `lanes` with a partitioned tail."""
    loop = sch.get_loops(block)[-1]
    extent = sch.get(loop).extent
    if _const(extent):
        sch.vectorize(loop)
        return
    outer, vector = sch.split(loop, [None, lanes])
    sch.vectorize(vector)
    _partition_tail(sch, outer)


def _transposed_vector_axis(sch, block, spatial, extents, lanes):
    """When the innermost output axis cannot be vectorised (rows of 7 or 14 pixels), an output-channel axis can be:
    each operand it indexes (a pointwise conv's weights; a depthwise conv's weights and input) is copied once per
    call, transposed so that the axis is its last dimension. Returns (axis, width), or None when no axis
    qualifies (an operand indexes it in more than one dimension)."""
    stmt = sch.get(block)
    for axis in reversed(spatial[:-1]):
        width = _vector_width(extents[axis], lanes)
        var = stmt.iter_vars[axis].var
        users = {i: [d for d, rng in enumerate(r.region) if _uses(rng.min, var)] for i, r in enumerate(stmt.reads)}
        users = {i: dims for i, dims in users.items() if dims}
        if not width or not users or any(len(dims) != 1 for dims in users.values()):
            continue
        try:
            for read, (dim,) in users.items():
                _move_dim_last(sch, block, read, dim, len(stmt.reads[read].region))
        except ScheduleError:
            return None
        return axis, width
    return None


def _move_dim_last(sch, block, read: int, dim: int, rank: int) -> None:
    """The block's `read`-th operand, copied into a buffer whose last dimension is the operand's `dim`."""
    from tvm.tirx import IndexMap

    if dim == rank - 1:
        return
    sch.cache_read(block, read, "global")
    sch.transform_layout(block, ("read", read), IndexMap.from_func(
        lambda *i: [*i[:dim], *i[dim + 1:], i[dim]], ndim=rank))


def _parallel_vectorize(sch, block, lanes: int) -> None:
    """Vectorise the innermost loop by whole vectors and parallelise the loops outside it. The innermost loop is
    never fused into the parallel one: that would put div/mod index arithmetic on every element. A symbolic
    innermost extent is vectorised with a partitioned tail."""
    loops = sch.get_loops(block)
    if not loops:
        return
    extent = sch.get(loops[-1]).extent
    tail = None
    if not _const(extent):
        tail, vector = sch.split(loops[-1], [None, lanes])
        sch.vectorize(vector)
        loops = [*loops[:-1], tail]
    elif int(extent) % lanes == 0:
        outer, vector = sch.split(loops[-1], [None, lanes])
        sch.vectorize(vector)
        loops = [*loops[:-1], outer]
    sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 1 else loops[0])
    if tail is not None:
        _partition_tail(sch, tail)


def _vector_width(extent: int | None, lanes: int) -> int:
    """Two vectors per row when the extent allows (hides FMA latency), else one, else a narrower register (AVX-512
    with rows of 40 or 20 pixels: 8 or 4 lanes, in a ymm or xmm register), else none (and none for a symbolic
    extent)."""
    if extent is None:
        return 0
    widths = (2 * lanes, lanes, lanes // 2, lanes // 4)
    return next((w for w in widths if w >= _MIN_LANES and extent % w == 0), 0)


def _rows(width: int, lanes: int) -> int:
    """Register-tile rows: enough accumulators (rows x registers per row) to fill half the vector register file,
    so the FMAs of independent accumulators hide each other's latency and the operands still fit beside them.
    AVX2 (8 lanes) has 16 vector registers; AVX-512 (16 lanes) and NEON (4 lanes) have 32."""
    registers = 16 if lanes == 8 else 32
    per_row = -(-width // lanes)
    return max(1, registers // 2 // per_row)


def _largest_divisor(extent: int, limit: int) -> int:
    return max(d for d in range(1, limit + 1) if extent % d == 0)


def _contiguous(block, var) -> bool:
    """The vector axis may index only the last dimension of the buffers the block reads, so the lanes load
    neighbouring elements (a stride-2 conv still vectorises; its loads become shuffles)."""
    return all(not _uses(r.min, var) for region in block.reads for r in region.region[:-1])


def _row_axis(block, ivs, spatial, vec, extents):
    """The spatial axis tiled into register rows: prefer one the vector operand does not depend on (output
    channels of a conv, rows of a matmul), so each loaded vector feeds several accumulators. Returns
    (axis or None, whether the vector operand is reused across it)."""
    candidates = [i for i in spatial if i != vec and (extents[i] is None or extents[i] > 1)]
    if not candidates:
        return None, False
    vec_reads = [r for r in block.reads if _uses(r.region[-1].min, ivs[vec].var)]
    free = [i for i in candidates
            if not any(_uses(d.min, ivs[i].var) for r in vec_reads for d in r.region)]
    return (free or candidates)[-1], bool(free)


def _uses(expr, var) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def _is_reduce_iv(iv) -> bool:
    return iv.iter_type == tirx.IterVar.CommReduce


def _const(expr) -> bool:
    return isinstance(expr, (int, tirx.IntImm))


def _extent(expr) -> int | None:
    """A loop or block-iter extent as an int; None when it is symbolic (a dynamic dimension)."""
    return int(expr) if _const(expr) else None
