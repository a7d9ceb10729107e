"""Fused attention kernel vs the float64 reference: lengths, head dims, masks, GQA, decode; builds."""

import functools
import shutil
import subprocess

import pytest
import torch
import tvm

from edgekit.kernels import attention
from tvm import relax

from edgekit.kernels.attention import api, bench, build, relax_pass, tir_kernel
from edgekit.kernels.attention.reference import attention_reference, visible_keys
from edgekit.targets import TARGETS, get_target

# The project's targets (edgekit/targets.py) the kernels cross-build for: every aarch64 target users compile for
# (android-arm64, jetson-orin's CUDA + Cortex-A78AE, rpi5) and the x86_64 + H100 CUDA target.
BUILD_TARGETS = sorted(n for n, t in TARGETS.items() if t.arch == "aarch64" or t.cuda_arch)
CUDA_TARGETS = sorted(n for n, t in TARGETS.items() if t.cuda_arch)
ELF_MACHINE = {"aarch64-linux-gnu": 183, "x86_64-linux-gnu": 62}  # ELF e_machine field
RTOL, ATOL = 1e-4, 1e-5  # fp32 accumulation over up to 4097 keys; the errors seen are ~1e-6


def _inputs(b, h, hkv, lq, lk, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=gen)
    k = torch.randn(b, hkv, lk, d, generator=gen)
    v = torch.randn(b, hkv, lk, d, generator=gen)
    return q, k, v


def _check(b, h, hkv, lq, lk, d, **mask):
    q, k, v = _inputs(b, h, hkv, lq, lk, d)
    out = attention(q, k, v, **mask)
    assert out.shape == q.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), attention_reference(q, k, v, **mask), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("length", [1, 7, 113, 1023])
@pytest.mark.parametrize("head_dim", [12, 24, 64, 80, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_prefill_sweep(length, head_dim, causal):
    _check(1, 2, 2, length, length, head_dim, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
def test_long_sequences(causal):
    _check(1, 1, 1, 1024, 1024, 64, causal=causal)
    _check(1, 1, 1, 4097, 4097, 64, causal=causal)


@pytest.mark.parametrize("window", [1, 16, 100, 5000])
@pytest.mark.parametrize("length", [7, 113, 1024])
def test_sliding_window(window, length):
    _check(1, 2, 2, length, length, 64, causal=True, window=window)


def test_window_alone_is_causal():
    q, k, v = _inputs(1, 2, 2, 50, 50, 32)
    torch.testing.assert_close(attention(q, k, v, window=8), attention(q, k, v, causal=True, window=8))


@pytest.mark.parametrize("heads,kv_heads", [(8, 1), (8, 2), (6, 3)])
def test_grouped_query(heads, kv_heads):
    _check(2, heads, kv_heads, 113, 113, 64, causal=True)
    _check(1, heads, kv_heads, 37, 37, 32)


@pytest.mark.parametrize("lq", [1, 3, 16, 17])
@pytest.mark.parametrize("head_dim", [24, 64, 128])
def test_decode_with_cache(lq, head_dim):
    """Lq < Lk: new queries sit at the end of the cache (bottom-right causal alignment)."""
    _check(1, 4, 2, lq, 4097, head_dim, causal=True)
    _check(1, 4, 4, lq, 1000, head_dim, causal=True, window=256)
    _check(1, 4, 4, lq, 1000, head_dim)


@pytest.mark.parametrize("b,h,hkv,lq,lk,d,mask,splits", [
    (1, 1, 1, 1, 4097, 64, {"causal": True}, 4),
    (1, 4, 2, 2, 1000, 128, {"causal": True}, 3),
    (1, 2, 2, 1, 1000, 64, {"causal": True, "window": 100}, 8),  # most chunks see no key
    (2, 2, 1, 3, 500, 32, {}, 5),
])
def test_split_k_decode(b, h, hkv, lq, lk, d, mask, splits):
    module = build.host_module(d)
    if not module.implements_function(build.SPLIT_SYMBOL):
        pytest.skip("split-K decode is part of the AVX-512 micro-kernel build; this host uses the TIR kernel")
    q, k, v = _inputs(b, h, hkv, lq, lk, d)
    out = torch.empty_like(q)
    module[build.SPLIT_SYMBOL](q, k, v, out, int(bool(mask)), mask.get("window", 0), d**-0.5, splits)
    torch.testing.assert_close(out.double(), attention_reference(q, k, v, **mask), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("rows,lq,lk,splits", [(1, 1, 4096, 4), (2, 2, 4096, 2), (4, 1, 4096, 1),
                                               (1, 16, 4096, 1), (1, 1, 300, 1), (1, 1, 600, 2)])
def test_decode_splits_fill_the_pool(rows, lq, lk, splits, monkeypatch):
    monkeypatch.setattr(api, "pool_threads", lambda: 2)
    assert api._decode_splits(rows, lq, lk) == splits


def test_bottom_right_alignment_matches_full_sequence():
    """Attending with the last 5 queries equals the last 5 rows of full causal attention."""
    q, k, v = _inputs(1, 2, 2, 40, 40, 64)
    full = attention(q, k, v, causal=True)
    torch.testing.assert_close(attention(q[:, :, -5:], k, v, causal=True), full[:, :, -5:])


def test_odd_head_dim_and_custom_scale():
    _check(1, 2, 1, 33, 70, 20, causal=True, scale=0.3)
    _check(2, 3, 3, 17, 17, 8, scale=1.0)


def test_non_contiguous_inputs():
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in _inputs(1, 4, 4, 50, 50, 32))
    assert not q.is_contiguous()
    torch.testing.assert_close(attention(q, k, v).double(), attention_reference(q, k, v), rtol=RTOL, atol=ATOL)


def test_large_scores_stay_finite():
    """Scores in the hundreds must not overflow exp (the online max subtraction)."""
    q, k, v = _inputs(1, 1, 1, 64, 64, 64)
    _ = q.mul_(30)
    out = attention(q, k, v, causal=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), attention_reference(q, k, v, causal=True), rtol=RTOL, atol=1e-4)


def test_visible_keys_contract():
    keep = visible_keys(3, 6, causal=True, window=2)
    # query i sits at key position 3 + i and sees positions pos-1 and pos
    assert keep.nonzero().tolist() == [[0, 2], [0, 3], [1, 3], [1, 4], [2, 4], [2, 5]]


@pytest.mark.parametrize("args,kwargs,error,text", [
    ((torch.zeros(1, 2, 3, 4, dtype=torch.float64),) * 3, {}, TypeError, "float32"),
    (([1.0],) * 3, {}, TypeError, "torch.Tensor"),
    ((torch.zeros(2, 3, 4),) * 3, {}, ValueError, "shape"),
    ((torch.zeros(1, 3, 4, 8), torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8)), {}, ValueError, "multiple"),
    ((torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 5, 8)), {}, ValueError, "same shape"),
    ((torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 16), torch.zeros(1, 2, 4, 16)), {}, ValueError, "head_dim"),
    ((torch.zeros(1, 2, 9, 8), torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8)), {"causal": True}, ValueError,
     "no keys"),
    ((torch.zeros(1, 2, 4, 8),) * 3, {"window": 0}, ValueError, "window"),
    ((torch.zeros(1, 2, 4, 8),) * 3, {"scale": float("nan")}, ValueError, "scale"),
])
def test_invalid_inputs(args, kwargs, error, text):
    with pytest.raises(error, match=text):
        attention(*args, **kwargs)


@functools.lru_cache(maxsize=None)
def _portable(head_dim, dtype="float32"):
    """The TIR used for aarch64 and CUDA (CPU schedule), compiled for this host."""
    module = tvm.compile(build.tir_module(build.host_target(), head_dim, dtype), target=build.host_target())
    return module[tir_kernel.SYMBOLS[dtype]]


@pytest.mark.parametrize("b,h,hkv,lq,lk,d,mask", [
    (1, 4, 2, 37, 70, 48, {}),
    (1, 4, 2, 37, 70, 48, {"causal": True}),
    (2, 2, 1, 113, 113, 64, {"causal": True, "window": 20}),
    (1, 2, 2, 1, 4097, 64, {"causal": True}),
    (1, 2, 2, 7, 7, 128, {}),
])
def test_portable_tir_kernel_on_host(b, h, hkv, lq, lk, d, mask):
    q, k, v = _inputs(b, h, hkv, lq, lk, d)
    out = torch.empty_like(q)
    _portable(d)(q, k, v, out, int(bool(mask)), mask.get("window", 0), d**-0.5)
    torch.testing.assert_close(out.double(), attention_reference(q, k, v, **mask), rtol=RTOL, atol=ATOL)


def test_portable_tir_kernel_float16_on_host():
    """float16 in and out, float32 accumulation: error at float16 rounding level."""
    q, k, v = (t.half() for t in _inputs(1, 4, 2, 37, 300, 64))
    out = torch.empty_like(q)
    _portable(64, "float16")(q, k, v, out, 1, 0, 0.125)
    expected = attention_reference(q, k, v, causal=True)
    torch.testing.assert_close(out.double(), expected, rtol=2e-3, atol=2e-3)


def test_package_stays_callable_after_submodule_imports():
    import edgekit.kernels
    import edgekit.kernels.attention.api  # noqa: F401  (rebinds edgekit.kernels.attention to the package)

    q, k, v = _inputs(1, 2, 2, 9, 9, 32)
    torch.testing.assert_close(edgekit.kernels.attention(q, k, v, causal=True), attention(q, k, v, causal=True))


@pytest.mark.parametrize("causal", [False, True])
def test_onnx_runtime_peer_matches_reference(causal):
    """The benchmark's ONNX Runtime graph computes the same attention (else its timing means nothing)."""
    q, k, v = _inputs(1, 2, 2, 20, 33, 32)
    session = bench.onnx_attention_session(list(q.shape), list(k.shape), causal, threads=1)
    (out,) = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})
    torch.testing.assert_close(torch.from_numpy(out).double(), attention_reference(q, k, v, causal=causal),
                               rtol=RTOL, atol=ATOL)


def test_missing_compiler_is_reported():
    with pytest.raises(RuntimeError, match="not found"):
        build.microkernel_fcompile("no-such-compiler")


@pytest.mark.parametrize("target_name", BUILD_TARGETS)
def test_cross_builds(target_name, tmp_path, monkeypatch):
    """aarch64 NEON and CUDA libraries build from the same TIR (running them needs the device)."""
    target = get_target(target_name)
    spec = target.tvm_target()
    compiler = target.cross_compiler  # None: the host's own compiler (TVM's default, g++)
    if shutil.which(compiler or "g++") is None:
        pytest.skip(f"compiler {compiler or 'g++'} not installed")
    if target.cuda_arch and shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    monkeypatch.setenv("EDGEKIT_KERNEL_CACHE", str(tmp_path))
    path = build.build_cross_library(spec, compiler, 64)
    assert path.parent == tmp_path
    data = path.read_bytes()
    host_triple = spec.get("host", spec)["mtriple"]
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == ELF_MACHINE[host_triple]
    assert tir_kernel.TILE_SYMBOL.encode() not in data  # the portable TIR, not the x86 micro-kernel
    if target.cuda_arch:
        assert b"attention_f32_kernel" in data  # the device kernel is embedded


def _relax_attention_module(lq, lk, causal_mask, scales=(None,), dtype="float32"):
    """main(q, k, v) in BSNH layout with one R.nn.attention per scale, summed."""
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((1, lq, 4, 64), dtype))
    k = relax.Var("k", relax.TensorType((1, lk, 4, 64), dtype))
    v = relax.Var("v", relax.TensorType((1, lk, 4, 64), dtype))
    with bb.function("main", [q, k, v]):
        with bb.dataflow():
            outs = [bb.emit(relax.op.nn.attention(q, k, v, scale=s, causal_mask=causal_mask)) for s in scales]
            total = outs[0]
            for o in outs[1:]:
                total = bb.emit(relax.op.add(total, o))
            result = bb.emit_output(total)
        bb.emit_func_output(result)
    return bb.get()


def _run_relax(mod, tmp_path, *tensors):
    target = build.host_target()
    lib = tmp_path / "model.so"
    tvm.compile(mod, target=tvm.target.Target(target)).export_library(
        str(lib), fcompile=relax_pass.link_fcompile(target))
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    return torch.from_dlpack(vm["main"](*[tvm.runtime.tensor(t.numpy()) for t in tensors]))


def _ops(mod):
    return mod["main"].script()


def test_relax_attention_op_uses_kernel(tmp_path):
    mod = relax_pass.use_fused_attention(_relax_attention_module(37, 37, "TopLeft", (None, 0.2)),
                                         build.host_target())
    assert "R.nn.attention" not in _ops(mod) and _ops(mod).count("R.call_tir") == 2
    q, k, v = (t.transpose(1, 2).contiguous() for t in _inputs(1, 4, 4, 37, 37, 64))  # BSNH
    out = _run_relax(mod, tmp_path, q, k, v).transpose(1, 2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    expected = attention_reference(q, k, v, causal=True) + attention_reference(q, k, v, causal=True, scale=0.2)
    torch.testing.assert_close(out.double(), expected, rtol=RTOL, atol=ATOL)


def test_relax_top_left_causal_with_unequal_lengths_is_left_alone():
    mod = relax_pass.use_fused_attention(_relax_attention_module(5, 9, "TopLeft"), build.host_target())
    assert "R.nn.attention" in _ops(mod) and "R.call_tir" not in _ops(mod)


def test_relax_matmul_softmax_chain_uses_kernel(tmp_path):
    bb = relax.BlockBuilder()
    params = [relax.Var(n, relax.TensorType((1, 2, 50, 32), "float32")) for n in "qkv"]
    with bb.function("main", params):
        with bb.dataflow():
            q, k, v = params
            scores = bb.emit(relax.op.matmul(q, bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2]))))
            scaled = bb.emit(relax.op.divide(scores, relax.const(4.0, "float32")))
            probs = bb.emit(relax.op.nn.softmax(scaled, axis=-1))
            result = bb.emit_output(relax.op.matmul(probs, v))
        bb.emit_func_output(result)
    mod = relax_pass.use_fused_attention(bb.get(), build.host_target())
    assert "R.nn.softmax" not in _ops(mod) and "R.call_tir" in _ops(mod)
    q, k, v = _inputs(1, 2, 2, 50, 50, 32)
    torch.testing.assert_close(_run_relax(mod, tmp_path, q, k, v).double(),
                               attention_reference(q, k, v, scale=0.25), rtol=RTOL, atol=ATOL)


def _cuda_sources(module):
    own = [module.inspect_source("cuda")] if module.kind == "cuda" else []
    return own + [src for child in module.imports for src in _cuda_sources(child)]


def test_relax_float16_attention_runs_on_host(tmp_path):
    mod = relax_pass.use_fused_attention(_relax_attention_module(30, 30, None, dtype="float16"),
                                         build.host_target())
    assert "R.nn.attention" not in _ops(mod)
    q, k, v = (t.half() for t in _inputs(1, 30, 30, 4, 4, 64))  # already BSNH: [1, 30, 4, 64]
    out = _run_relax(mod, tmp_path, q, k, v).transpose(1, 2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    torch.testing.assert_close(out.double(), attention_reference(q, k, v), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("target_name", CUDA_TARGETS)
def test_relax_rewrite_builds_for_cuda(target_name, dtype, tmp_path):
    """The rewritten model compiles for CUDA, and nvcc turns its device code into a cubin."""
    target = get_target(target_name).tvm_target()
    mod = relax_pass.use_fused_attention(_relax_attention_module(64, 64, "BottomRight", dtype=dtype), target)
    assert "R.call_tir" in _ops(mod)
    (source,) = _cuda_sources(tvm.compile(mod, target=tvm.target.Target(target)).mod)
    assert "threadIdx.x" in source
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed: CUDA source generated but not compiled")
    (tmp_path / "kernels.cu").write_text(source)
    done = subprocess.run(["nvcc", "--cubin", f"-arch={target['arch']}", "-O3", "-o", str(tmp_path / "k.cubin"),
                           str(tmp_path / "kernels.cu")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# The NEON build (portable TIR for aarch64) for android-arm64 run under the emulator: one guest process per head dim.
NEON_SWEEP = {
    d: [(1, 2, 2, n, n, {"causal": c}) for n in (1, 7, 113, 1023) for c in (False, True)] for d in (32, 80, 128)}
NEON_SWEEP[64] = [
    *[(1, 1, 1, n, n, {"causal": c}) for n in (1, 7, 113, 1023, 1024, 4097) for c in (False, True)],
    *[(1, 2, 2, n, n, {"causal": True, "window": w}) for n in (113, 1024) for w in (1, 100)],
    (2, 8, 2, 113, 113, {"causal": True}),                     # grouped-query
    *[(1, 4, 2, lq, 4097, {"causal": True}) for lq in (1, 17)],  # decode with a KV cache
]


@pytest.mark.emulator
def test_aarch64_build_under_emulator(emulator_sysroot):
    from edgekit.runtimes import emulator

    target = get_target("android-arm64")
    calls, cases = [], []
    for head_dim, sweep in NEON_SWEEP.items():
        library = build.build_cross_library(target.tvm_target(), target.cross_compiler, head_dim)
        for i, (b, h, hkv, lq, lk, mask) in enumerate(sweep):
            q, k, v = _inputs(b, h, hkv, lq, lk, head_dim, seed=i)
            flags = [int(mask["causal"]), mask.get("window", 0), head_dim**-0.5]
            calls.append((library, tir_kernel.SYMBOLS["float32"],
                          [t.numpy() for t in (q, k, v, torch.empty_like(q))] + flags, [3]))
            cases.append(((head_dim, b, h, hkv, lq, lk, mask), attention_reference(q, k, v, **mask)))
    for (case, ref), (out,) in zip(cases, emulator.call_functions(calls)):
        torch.testing.assert_close(torch.from_numpy(out).double(), ref, rtol=RTOL, atol=ATOL,
                                   msg=lambda m, case=case: f"{case}: {m}")
