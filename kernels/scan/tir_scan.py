"""TensorIR for the Mamba-1 selective scan and the single-step state update.

TIR only, no hand-written C++ micro-kernel: on x86 the generated inner loop is already ~30
AVX-512 instructions per time step with the state held in a register (polynomial exp, no libm
calls), measured at ~0.33 ns per state element per core; a C++ kernel would issue the same
instructions, and this code also lowers to NEON and CUDA.

One builder per kernel; `Schedule` carries the per-target choices (how channels are spread over
cores or threads, how the state dimension becomes SIMD lanes, which exp). Shapes are symbolic
except the state size N, which is the SIMD width and must be a power of two (api.py pads).
B and C come in the caller's [batch, groups, N, L] layout; the scan first copies them time-major.
"""

from contextlib import contextmanager
from dataclasses import dataclass

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from . import tir_math

CHUNK = 16  # time steps whose softplus / gating are computed as one SIMD vector
GPU_BLOCK = 64  # channels (threads) per CUDA block
FUNC_NAMES = {"scan": "selective_scan", "state_update": "selective_state_update"}


@dataclass(frozen=True)
class Options:
    n_state: int
    has_d: bool = False
    has_z: bool = False
    has_bias: bool = False
    softplus: bool = False


@dataclass(frozen=True)
class Schedule:
    gpu: bool

    @contextmanager
    def channels(self, extent):
        """Loop over batch*channels: cores on CPU, one CUDA thread per channel on GPU."""
        if not self.gpu:
            with T.parallel(0, extent) as bd:
                yield bd
            return
        blocks = (extent + GPU_BLOCK - 1) // GPU_BLOCK
        with T.thread_binding(0, blocks, thread="blockIdx.x") as bx:
            with T.thread_binding(0, GPU_BLOCK, thread="threadIdx.x") as tx:
                bd = T.Bind(bx * GPU_BLOCK + tx)
                with T.If(bd < extent):
                    with T.Then():
                        yield bd

    def lanes(self, extent):
        # CUDA has no wide vectors; unrolling keeps the state in registers there.
        return T.unroll(0, extent) if self.gpu else T.vectorized(0, extent)

    @property
    def scratch_scope(self):
        # On CPU "global" allocations of constant size become stack allocas that LLVM keeps in
        # registers; "local" would go through TVMBackendAllocWorkspace on every channel.
        return "local" if self.gpu else "global"

    def exp(self, x):
        return tirx.exp(x) if self.gpu else tir_math.exp(x)

    def exp2(self, x):
        return tirx.exp2(x) if self.gpu else tir_math.exp2(x)

    def softplus(self, x):
        if self.gpu:
            return tirx.max(x, 0.0) + tirx.log1p(tirx.exp(-tirx.abs(x)))
        return tir_math.softplus(x)

    def silu(self, x):
        return x / (1.0 + tirx.exp(-x)) if self.gpu else tir_math.silu(x)


def schedule_for(target_kind: str) -> Schedule:
    return Schedule(gpu=target_kind == "cuda")


def _store(buf, value, *index):
    T.buffer_store(buf, value, list(index))


def _tree_sum(buf, width, lanes):
    """buf[0] = sum(buf[:width]) by halving, so SIMD adds replace a serial chain."""
    while width > 1:
        width //= 2
        with lanes(width) as j:
            _store(buf, buf[j] + buf[j + width], j)


def _var(name):
    return tirx.Var(name, "int64")


def build_scan(opts: Options, sched: Schedule):
    n = opts.n_state
    batch, dim, length, groups = _var("batch"), _var("dim"), _var("length"), _var("groups")
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAMES["scan"])
            T.func_attr({"tir.noalias": True})
            bufs = {}

            def arg(name, shape):
                bufs[name] = T.arg(name, T.buffer(shape, "float32", buffer_name=name))

            arg("u", (batch, dim, length))
            arg("delta", (batch, dim, length))
            arg("A", (dim, n))
            arg("B", (batch, groups, n, length))
            arg("C", (batch, groups, n, length))
            if opts.has_d:
                arg("D", (dim,))
            if opts.has_z:
                arg("z", (batch, dim, length))
            if opts.has_bias:
                arg("delta_bias", (dim,))
            arg("out", (batch, dim, length))
            arg("last_state", (batch, dim, n))
            for name in ("B", "C"):
                bufs[name] = _time_major(bufs[name], sched)
            _scan_body(bufs, opts, sched, batch, dim, length, groups)
    return ib.get()


def _time_major(src, sched):
    """[batch, groups, N, L] -> workspace [batch, groups, L, N]: each step then reads one vector.

    Done here rather than with torch so the whole call runs on TVM's thread pool; torch's OpenMP
    workers spin after a parallel copy and would take a core from the scan on small machines.
    """
    batch, groups, n, length = src.shape
    dst = T.alloc_buffer((batch, groups, length, n), "float32")
    with sched.channels(batch * groups * length) as row:
        b = T.Bind(row // (groups * length))
        g = T.Bind(row // length % groups)
        l = T.Bind(row % length)
        with sched.lanes(n) as i:
            _store(dst, src[b, g, i, l], b, g, l, i)
    return dst


def _scan_body(bufs, opts, sched, batch, dim, length, groups):
    n, vec = opts.n_state, sched.lanes
    u, delta, a_mat, b_mat, c_mat = (bufs[k] for k in ("u", "delta", "A", "B", "C"))
    with sched.channels(batch * dim) as bd:
        b = T.Bind(bd // dim)
        d = T.Bind(bd % dim)
        g = T.Bind(d // (dim // groups))
        scratch = {
            name: T.alloc_buffer((size,), "float32", scope=sched.scratch_scope)
            for name, size in (("h", n), ("a2", n), ("prod", n), ("dt", CHUNK), ("du", CHUNK),
                               ("y", CHUNK))
        }
        h, a2, prod, dt, du, y = (scratch[k] for k in ("h", "a2", "prod", "dt", "du", "y"))
        with vec(n) as i:
            _store(h, tirx.const(0.0, "float32"), i)
            # exp(dt*A) == exp2(dt * A*log2(e)): fold the constant once per channel.
            _store(a2, a_mat[d, i] * tir_math.LOG2E, i)

        def chunk(l0, steps, tail):
            with vec(CHUNK) as j:
                # The last, partial chunk clamps so its vector prologue stays in bounds; full
                # chunks don't, so their loads stay contiguous.
                l = tirx.min(l0 + j, length - 1) if tail else l0 + j
                v = delta[b, d, l]
                if opts.has_bias:
                    v = v + bufs["delta_bias"][d]
                if opts.softplus:
                    v = sched.softplus(v)
                _store(dt, v, j)
                _store(du, v * u[b, d, l], j)
            with T.serial(0, steps) as j:
                l = l0 + j
                with vec(n) as i:
                    decay = sched.exp2(dt[j] * a2[i])
                    _store(h, decay * h[i] + du[j] * b_mat[b, g, l, i], i)
                with vec(n) as i:
                    _store(prod, h[i] * c_mat[b, g, l, i], i)
                _tree_sum(prod, n, vec)
                _store(y, prod[0], j)
            with (T.serial(0, steps) if tail else vec(steps)) as j:
                l = l0 + j
                out = y[j]
                if opts.has_d:
                    out = out + bufs["D"][d] * u[b, d, l]
                if opts.has_z:
                    out = out * sched.silu(bufs["z"][b, d, l])
                _store(bufs["out"], out, b, d, l)

        full = length // CHUNK
        with T.serial(0, full) as c:
            chunk(c * CHUNK, CHUNK, tail=False)
        with T.If(full * CHUNK < length):
            with T.Then():
                chunk(full * CHUNK, length - full * CHUNK, tail=True)
        with vec(n) as i:
            _store(bufs["last_state"], h[i], b, d, i)


def build_state_update(opts: Options, sched: Schedule):
    """One decoding step: state <- exp(dt*A)*state + dt*B*x (in place); out = C.state (+D*x, *silu(z))."""
    n, vec = opts.n_state, sched.lanes
    batch, dim, groups = _var("batch"), _var("dim"), _var("groups")
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAMES["state_update"])
            T.func_attr({"tir.noalias": True})
            bufs = {}

            def arg(name, shape):
                bufs[name] = T.arg(name, T.buffer(shape, "float32", buffer_name=name))

            arg("x", (batch, dim))
            arg("dt", (batch, dim))
            arg("A", (dim, n))
            arg("B", (batch, groups, n))
            arg("C", (batch, groups, n))
            if opts.has_d:
                arg("D", (dim,))
            if opts.has_z:
                arg("z", (batch, dim))
            if opts.has_bias:
                arg("dt_bias", (dim,))
            arg("state", (batch, dim, n))  # read and updated in place
            arg("out", (batch, dim))
            _update_body(bufs, opts, sched, batch, dim, groups)
    return ib.get()


def _update_body(bufs, opts, sched, batch, dim, groups):
    """Channels in blocks of CHUNK: dt/softplus and the D/z epilogue run as SIMD over the block,
    the state update as SIMD over N per channel."""
    n, vec = opts.n_state, sched.lanes
    state, x, b_mat, c_mat = bufs["state"], bufs["x"], bufs["B"], bufs["C"]
    blocks = (dim + CHUNK - 1) // CHUNK
    with sched.channels(batch * blocks) as bb:
        b = T.Bind(bb // blocks)
        d0 = T.Bind(bb % blocks * CHUNK)
        scratch = [T.alloc_buffer((size,), "float32", scope=sched.scratch_scope)
                   for size in (n, CHUNK, CHUNK, CHUNK)]
        prod, dt, dx, y = scratch

        def block(count, tail):
            with vec(CHUNK) as j:
                d = tirx.min(d0 + j, dim - 1) if tail else d0 + j  # clamp: see _scan_body
                v = bufs["dt"][b, d]
                if opts.has_bias:
                    v = v + bufs["dt_bias"][d]
                if opts.softplus:
                    v = sched.softplus(v)
                _store(dt, v, j)
                _store(dx, v * x[b, d], j)
            with T.serial(0, count) as j:
                d = d0 + j
                g = d // (dim // groups)
                with vec(n) as i:
                    decay = sched.exp(dt[j] * bufs["A"][d, i])
                    _store(prod, decay * state[b, d, i] + dx[j] * b_mat[b, g, i], i)
                with vec(n) as i:
                    _store(state, prod[i], b, d, i)
                    _store(prod, prod[i] * c_mat[b, g, i], i)
                _tree_sum(prod, n, vec)
                _store(y, prod[0], j)
            with (T.serial(0, count) if tail else vec(count)) as j:
                d = d0 + j
                out = y[j]
                if opts.has_d:
                    out = out + bufs["D"][d] * x[b, d]
                if opts.has_z:
                    out = out * sched.silu(bufs["z"][b, d])
                _store(bufs["out"], out, b, d)

        with T.If(d0 + CHUNK <= dim):
            with T.Then():
                block(CHUNK, tail=False)
            with T.Else():
                block(dim - d0, tail=True)
