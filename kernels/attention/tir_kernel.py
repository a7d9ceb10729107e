"""Flash attention as TVM TensorIR, in two forms.

* `flash_rows`: the whole algorithm in TIR, one query row per iteration with an online softmax over
  blocks of KEY_BLOCK keys (the score matrix never exists). Placed per target: parallel + vectorised
  loops on CPUs, one thread per row on CUDA. This is what aarch64 and CUDA builds use.
* `tile_driver`: TIR that splits the work into 16-query tiles across TVM's thread pool and calls
  the hand-written AVX-512 tile kernel (microkernel_avx512.cc) for each. Used on x86 hosts with
  AVX-512 because, measured on the 2-core dev host (B=1, H=8, L=1024, D=64), `flash_rows` takes
  ~600 ms where the micro-kernel takes ~15-30 ms (see bench.py).

All functions share one calling convention, with lengths symbolic so one build serves every shape:
    attention_f32(q[B,H,Lq,D], k[B,Hkv,Lk,D], v[B,Hkv,Lk,D], o[B,H,Lq,D], causal, window, scale)
causal != 0: query i sits at key position Lk - Lq + i and sees keys j <= it (bottom-right aligned);
window > 0 also drops keys j <= position - window; window <= 0 means no window.
"""

from tvm.script import tirx as T

KEY_BLOCK = 32
TILE_ROWS = 16  # queries per micro-kernel call (one zmm register of fp32 lanes)
CUDA_THREADS = 64
TILE_SYMBOL = "ek_attention_tile_f32"
SYMBOLS = {"float32": "attention_f32", "float16": "attention_f16"}


def flash_rows(head_dim: int, target_kind: str, dtype: str = "float32"):
    """Portable TIR flash attention for a fixed head dim; target_kind 'cpu' or 'cuda'.

    dtype float32 or float16 (inputs and output); scores and sums always accumulate in float32.
    """
    D, KB, DT = head_dim, KEY_BLOCK, dtype
    # The per-target schedule of the row: SIMD lanes over the head dim on CPUs; on CUDA one thread
    # owns a row, so head-dim loops unroll into registers.
    lanes = {"cpu": T.vectorized, "cuda": T.unroll}[target_kind]

    @T.macro
    def one_row(Q, K, V, O, r, causal, window, scale):
        qs = T.alloc_buffer((D,), "float32", scope="local")
        acc = T.alloc_buffer((D,), "float32", scope="local")
        s = T.alloc_buffer((KB,), "float32", scope="local")
        st = T.alloc_buffer((3,), "float32", scope="local")  # running max, running sum, new max
        b, h, lq, lk = Q.shape[0], Q.shape[1], Q.shape[2], K.shape[2]
        bi, hi, i = r // (h * lq), r // lq % h, r % lq
        hk = hi // (h // K.shape[1])
        pos = T.if_then_else(causal != 0, lk - lq, lk - 1) + i  # non-causal: at or past the last key
        lo = T.if_then_else(window > 0, T.max(T.int64(0), pos - T.Cast("int64", window) + 1), T.int64(0))
        end = T.min(lk, pos + 1)
        for d in lanes(D):
            qs[d] = T.Cast("float32", Q[bi, hi, i, d]) * scale
            acc[d] = T.float32(0)
        st[0] = T.float32(-3.0e38)
        st[1] = T.float32(0)
        for jb in range((end - lo + KB - 1) // KB):
            j0 = lo + jb * KB
            st[2] = st[0]
            for jj in range(T.min(T.int64(KB), end - j0)):
                s[jj] = T.float32(0)
                for d in range(D):
                    s[jj] = s[jj] + qs[d] * T.Cast("float32", K[bi, hk, j0 + jj, d])
                st[2] = T.max(st[2], s[jj])
            alpha = T.exp(st[0] - st[2])
            st[1] = st[1] * alpha
            for d in lanes(D):
                acc[d] = acc[d] * alpha
            for jj in range(T.min(T.int64(KB), end - j0)):
                p = T.exp(s[jj] - st[2])
                st[1] = st[1] + p
                for d in lanes(D):
                    acc[d] = acc[d] + p * T.Cast("float32", V[bi, hk, j0 + jj, d])
            st[0] = st[2]
        for d in lanes(D):
            O[bi, hi, i, d] = T.Cast(DT, acc[d] / st[1])

    @T.prim_func
    def attention_cpu(q: T.handle, k: T.handle, v: T.handle, o: T.handle,
                      causal: T.int32, window: T.int32, scale: T.float32):
        b, h, hkv, lq, lk = T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
        Q = T.match_buffer(q, (b, h, lq, D), DT)
        K = T.match_buffer(k, (b, hkv, lk, D), DT)
        V = T.match_buffer(v, (b, hkv, lk, D), DT)
        O = T.match_buffer(o, (b, h, lq, D), DT)
        for r in T.parallel(b * h * lq):
            one_row(Q, K, V, O, r, causal, window, scale)

    @T.prim_func
    def attention_cuda(q: T.handle, k: T.handle, v: T.handle, o: T.handle,
                       causal: T.int32, window: T.int32, scale: T.float32):
        b, h, hkv, lq, lk = T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
        Q = T.match_buffer(q, (b, h, lq, D), DT)
        K = T.match_buffer(k, (b, hkv, lk, D), DT)
        V = T.match_buffer(v, (b, hkv, lk, D), DT)
        O = T.match_buffer(o, (b, h, lq, D), DT)
        for bx in T.thread_binding((b * h * lq + CUDA_THREADS - 1) // CUDA_THREADS, thread="blockIdx.x"):
            for tx in T.thread_binding(CUDA_THREADS, thread="threadIdx.x"):
                if bx * CUDA_THREADS + tx < b * h * lq:
                    one_row(Q, K, V, O, bx * CUDA_THREADS + tx, causal, window, scale)

    func = {"cpu": attention_cpu, "cuda": attention_cuda}[target_kind]
    return func.with_attr("global_symbol", SYMBOLS[dtype])


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
