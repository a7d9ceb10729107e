"""Flash attention as TVM TensorIR.

Every kernel runs an online softmax over blocks of KEY_BLOCK keys, so the L x L score matrix never
exists, and shares one calling convention with symbolic lengths (one build serves every shape):
    attention_f32(q[B,H,Lq,D], k[B,Hkv,Lk,D], v[B,Hkv,Lk,D], o[B,H,Lq,D], causal, window, scale)
causal != 0: query i sits at key position Lk - Lq + i and sees keys j <= it (bottom-right aligned);
window > 0 also drops keys j <= position - window; window <= 0 means no window.

* `portable_kernel`: the whole algorithm in TIR, for any target. CPU schedule (aarch64 NEON, x86
  without AVX-512): 16 queries of a tile sit in SIMD lanes, so K and V are read in their natural
  layout and the softmax needs no horizontal reductions. CUDA schedule: one thread per query row.
* `tile_driver`: splits the work into 16-query tiles across TVM's thread pool and calls the
  hand-written AVX-512 tile kernel (microkernel_avx512.cc, the same algorithm) for each. Used on
  x86 hosts with AVX-512 because it is ~4x faster than the CPU schedule above: single-thread CPU
  time for B=1, H=8, L=1024, D=64 on the dev host, 22 ms vs 89 ms (LLVM does not keep the TIR's
  accumulators in registers the way the hand-blocked loops do).
* `split_driver`: split-K decode on the same micro-kernel, for a few query rows over a long cache
  (otherwise fewer rows than threads leave cores idle): key chunks run in parallel, then merge.
"""

from tvm.script import tirx as T

KEY_BLOCK = 32
TILE_ROWS = 16  # queries per tile: one AVX-512 register of fp32 lanes
CUDA_THREADS = 64
TILE_SYMBOL = "ek_attention_tile_f32"
ROW_PARTIAL_SYMBOL = "ek_attention_row_partial_f32"
SYMBOLS = {"float32": "attention_f32", "float16": "attention_f16"}
LOG2E = 1.4426950408889634
NEG_BIG = -3.0e38  # initial running max: finite, so fully masked blocks never compute inf - inf


def exp2(x):
    """2^x in float32 for x <= 0: a degree-6 polynomial on the fraction, exponent bits for 2^n.

    LLVM would scalarise a vector exp into libm calls; this stays in SIMD registers.
    """
    x = T.max(x, T.float32(-126.0))
    n = T.floor(x + T.float32(0.5))
    f = (x - n) * T.float32(0.6931471805599453)
    p = T.float32(1.0 / 720)
    for c in (1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):
        p = p * f + T.float32(c)
    return p * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))


def visible(j, pos, window):
    """Key j is visible from query position pos (keys past pos are cut by the loop bounds too)."""
    return (j <= pos) & ((window <= 0) | (j > pos - T.Cast("int64", window)))


def portable_kernel(head_dim: int, target_kind: str, dtype: str = "float32"):
    """TIR flash attention for a fixed head dim; target_kind 'cpu' or 'cuda'.

    dtype float32 or float16 (inputs and output); scores and sums always accumulate in float32.
    """
    func = {"cpu": _cpu_tiles, "cuda": _cuda_rows}[target_kind](head_dim, dtype)
    return func.with_attr("global_symbol", SYMBOLS[dtype])


def _cpu_tiles(D, DT):
    R, KB = TILE_ROWS, KEY_BLOCK

    @T.prim_func
    def attention(q: T.handle, k: T.handle, v: T.handle, o: T.handle,
                  causal: T.int32, window: T.int32, scale: T.float32):
        b, h, hkv, lq, lk = T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
        Q = T.match_buffer(q, (b, h, lq, D), DT)
        K = T.match_buffer(k, (b, hkv, lk, D), DT)
        V = T.match_buffer(v, (b, hkv, lk, D), DT)
        O = T.match_buffer(o, (b, h, lq, D), DT)
        ntile = (lq + R - 1) // R
        for t in T.parallel(b * h * ntile):
            qt = T.alloc_buffer((D, R), "float32", scope="local")  # Q tile transposed: queries in lanes
            acc = T.alloc_buffer((D, R), "float32", scope="local")
            s = T.alloc_buffer((KB, R), "float32", scope="local")
            m = T.alloc_buffer((R,), "float32", scope="local")
            m_new = T.alloc_buffer((R,), "float32", scope="local")
            l = T.alloc_buffer((R,), "float32", scope="local")
            bi, hi, i0 = t // (h * ntile), t // ntile % h, t % ntile * R
            hk = hi // (h // hkv)
            pos0 = T.if_then_else(causal != 0, lk - lq, lk - 1) + i0  # non-causal: at or past the last key
            lo = T.if_then_else(window > 0, T.max(T.int64(0), pos0 - T.Cast("int64", window) + 1), T.int64(0))
            end = T.min(lk, pos0 + T.min(T.int64(R), lq - i0))
            for d in range(D):
                for r in T.vectorized(R):  # rows past lq repeat the last row; they are never stored
                    qt[d, r] = T.Cast("float32", Q[bi, hi, T.min(i0 + r, lq - 1), d]) * scale * T.float32(LOG2E)
                    acc[d, r] = T.float32(0)
            for r in T.vectorized(R):
                m[r] = T.float32(NEG_BIG)
                l[r] = T.float32(0)
            for jb in range((end - lo + KB - 1) // KB):
                j0 = lo + jb * KB
                n = T.min(T.int64(KB), end - j0)
                for jj in range(n):
                    for r in T.vectorized(R):
                        s[jj, r] = T.float32(0)
                    for d in range(D):
                        for r in T.vectorized(R):
                            s[jj, r] = s[jj, r] + T.Cast("float32", K[bi, hk, j0 + jj, d]) * qt[d, r]
                for r in T.vectorized(R):
                    m_new[r] = m[r]
                for jj in range(n):
                    for r in T.vectorized(R):
                        m_new[r] = T.max(m_new[r], T.if_then_else(
                            visible(j0 + jj, pos0 + r, window), s[jj, r], T.float32(NEG_BIG)))
                for r in T.vectorized(R):
                    l[r] = l[r] * exp2(m[r] - m_new[r])
                for d in range(D):
                    for r in T.vectorized(R):
                        acc[d, r] = acc[d, r] * exp2(m[r] - m_new[r])
                for jj in range(n):
                    for r in T.vectorized(R):
                        s[jj, r] = T.if_then_else(visible(j0 + jj, pos0 + r, window),
                                                  exp2(s[jj, r] - m_new[r]), T.float32(0))
                        l[r] = l[r] + s[jj, r]
                for d in range(D):
                    for jj in range(n):
                        for r in T.vectorized(R):
                            acc[d, r] = acc[d, r] + T.Cast("float32", V[bi, hk, j0 + jj, d]) * s[jj, r]
                for r in T.vectorized(R):
                    m[r] = m_new[r]
            for r in range(T.min(T.int64(R), lq - i0)):
                for d in range(D):
                    O[bi, hi, i0 + r, d] = T.Cast(DT, acc[d, r] / l[r])

    return attention


def _cuda_rows(D, DT):
    KB = KEY_BLOCK

    @T.prim_func
    def attention(q: T.handle, k: T.handle, v: T.handle, o: T.handle,
                  causal: T.int32, window: T.int32, scale: T.float32):
        b, h, hkv, lq, lk = T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
        Q = T.match_buffer(q, (b, h, lq, D), DT)
        K = T.match_buffer(k, (b, hkv, lk, D), DT)
        V = T.match_buffer(v, (b, hkv, lk, D), DT)
        O = T.match_buffer(o, (b, h, lq, D), DT)
        for bx in T.thread_binding((b * h * lq + CUDA_THREADS - 1) // CUDA_THREADS, thread="blockIdx.x"):
            for tx in T.thread_binding(CUDA_THREADS, thread="threadIdx.x"):
                if bx * CUDA_THREADS + tx < b * h * lq:
                    qs = T.alloc_buffer((D,), "float32", scope="local")
                    acc = T.alloc_buffer((D,), "float32", scope="local")  # head-dim loops unroll into registers
                    s = T.alloc_buffer((KB,), "float32", scope="local")
                    st = T.alloc_buffer((3,), "float32", scope="local")  # running max, running sum, new max
                    r = bx * CUDA_THREADS + tx
                    bi, hi, i = r // (h * lq), r // lq % h, r % lq
                    hk = hi // (h // hkv)
                    pos = T.if_then_else(causal != 0, lk - lq, lk - 1) + i
                    lo = T.if_then_else(window > 0, T.max(T.int64(0), pos - T.Cast("int64", window) + 1), T.int64(0))
                    end = T.min(lk, pos + 1)
                    for d in T.unroll(D):
                        qs[d] = T.Cast("float32", Q[bi, hi, i, d]) * scale * T.float32(LOG2E)
                        acc[d] = T.float32(0)
                    st[0] = T.float32(NEG_BIG)
                    st[1] = T.float32(0)
                    for jb in range((end - lo + KB - 1) // KB):
                        j0 = lo + jb * KB
                        st[2] = st[0]
                        for jj in range(T.min(T.int64(KB), end - j0)):
                            s[jj] = T.float32(0)
                            for d in T.unroll(D):
                                s[jj] = s[jj] + qs[d] * T.Cast("float32", K[bi, hk, j0 + jj, d])
                            st[2] = T.max(st[2], s[jj])
                        for d in T.unroll(D):
                            acc[d] = acc[d] * exp2(st[0] - st[2])
                        st[1] = st[1] * exp2(st[0] - st[2])
                        for jj in range(T.min(T.int64(KB), end - j0)):
                            st[1] = st[1] + exp2(s[jj] - st[2])
                            for d in T.unroll(D):
                                acc[d] = acc[d] + exp2(s[jj] - st[2]) * T.Cast("float32", V[bi, hk, j0 + jj, d])
                        st[0] = st[2]
                    for d in T.unroll(D):
                        O[bi, hi, i, d] = T.Cast(DT, acc[d] / st[1])

    return attention


@T.prim_func
def tile_driver(q: T.handle, k: T.handle, v: T.handle, o: T.handle,
                causal: T.int32, window: T.int32, scale: T.float32):
    b, h, hkv, lq, lk, d = T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
    Q = T.match_buffer(q, (b, h, lq, d), "float32")
    K = T.match_buffer(k, (b, hkv, lk, d), "float32")
    V = T.match_buffer(v, (b, hkv, lk, d), "float32")
    O = T.match_buffer(o, (b, h, lq, d), "float32")
    ntile = (lq + TILE_ROWS - 1) // TILE_ROWS
    # The micro-kernel's mask: query i at offset + i sees keys (offset + i - span, offset + i].
    offset = T.Cast("int32", T.if_then_else(causal != 0, lk - lq, lk - 1))
    span = T.if_then_else(window > 0, window, T.Cast("int32", lk + lq + TILE_ROWS))
    for t in T.parallel(b * h * ntile):
        bi, hi, u = t // (h * ntile), t // ntile % h, t % ntile
        # Interleave early and late tiles so the thread pool's contiguous chunks get equal causal work.
        i0 = T.if_then_else(u % 2 == 0, u // 2, ntile - 1 - u // 2) * TILE_ROWS
        hk = hi // (h // hkv)
        T.evaluate(T.call_extern(
            "int32", TILE_SYMBOL,
            T.address_of(Q[bi, hi, i0, 0]), T.address_of(K[bi, hk, 0, 0]),
            T.address_of(V[bi, hk, 0, 0]), T.address_of(O[bi, hi, i0, 0]),
            T.Cast("int32", T.min(lq - i0, TILE_ROWS)), T.Cast("int32", lk), T.Cast("int32", d),
            offset + T.Cast("int32", i0), span, scale))


@T.prim_func
def split_driver(q: T.handle, k: T.handle, v: T.handle, o: T.handle,
                 causal: T.int32, window: T.int32, scale: T.float32, splits: T.int32):
    """Split-K decode for few query rows and long caches: each row's keys are cut into `splits`
    chunks that run in parallel through the micro-kernel, then the partial softmaxes are merged."""
    b, h, hkv, lq, lk, d = T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
    Q = T.match_buffer(q, (b, h, lq, d), "float32")
    K = T.match_buffer(k, (b, hkv, lk, d), "float32")
    V = T.match_buffer(v, (b, hkv, lk, d), "float32")
    O = T.match_buffer(o, (b, h, lq, d), "float32")
    part = T.alloc_buffer((b * h * lq * T.Cast("int64", splits), d), "float32")  # unnormalised outputs
    ml = T.alloc_buffer((b * h * lq * T.Cast("int64", splits), 2), "float32")  # (base-2 max, weight sum)
    S = T.Cast("int64", splits)
    chunk = (lk + S - 1) // S
    offset = T.Cast("int32", T.if_then_else(causal != 0, lk - lq, lk - 1))
    span = T.if_then_else(window > 0, window, T.Cast("int32", lk + lq + TILE_ROWS))
    for t in T.parallel(b * h * lq * S):
        bi, hi, i, c = t // (h * lq * S), t // (lq * S) % h, t // S % lq, t % S
        hk = hi // (h // hkv)
        T.evaluate(T.call_extern(
            "int32", ROW_PARTIAL_SYMBOL,
            T.address_of(Q[bi, hi, i, 0]), T.address_of(K[bi, hk, 0, 0]), T.address_of(V[bi, hk, 0, 0]),
            T.address_of(part[t, 0]), T.address_of(ml[t, 0]), T.Cast("int32", lk), T.Cast("int32", d),
            offset + T.Cast("int32", i), span, scale,
            T.Cast("int32", c * chunk), T.Cast("int32", T.min(lk, (c + 1) * chunk))))
    for r in T.parallel(b * h * lq):
        st = T.alloc_buffer((2,), "float32", scope="local")  # merged max, merged weight sum
        st[0] = T.float32(NEG_BIG)
        st[1] = T.float32(0)
        for c in range(S):
            st[0] = T.max(st[0], ml[r * S + c, 0])
        for c in range(S):
            st[1] = st[1] + ml[r * S + c, 1] * exp2(ml[r * S + c, 0] - st[0])
        for dd in range(d):
            O[r // (h * lq), r // lq % h, r % lq, dd] = T.float32(0)
        for c, dd in T.grid(S, d):
            O[r // (h * lq), r // lq % h, r % lq, dd] = (O[r // (h * lq), r // lq % h, r % lq, dd]
                                                        + part[r * S + c, dd] * exp2(ml[r * S + c, 0] - st[0]) / st[1])
