"""Attention benchmark: our kernel vs torch SDPA, ONNX Runtime, ExecuTorch and TVM's default lowering, one run.

    python -m edgekit.kernels.attention.bench [--threads 2] [--json PATH]

Reports GFLOP/s against this machine's SGEMM peak (torch.mm, same run) for prefill and the
achieved K/V read bandwidth against a large-copy bandwidth measurement for decode.
"""

import os

from ..benchmark import copy_bandwidth_gbs, main as bench_main, sgemm_peak_gflops, timed


def onnx_attention_session(shape_q, shape_kv, causal, threads):
    """ORT session for softmax(q k^T * scale + mask) v written as plain MatMul/Softmax ONNX ops."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from .reference import visible_keys

    lq, lk, d = shape_q[2], shape_kv[2], shape_q[3]
    mask = np.where(visible_keys(lq, lk, causal, None).numpy(), 0.0, -np.inf).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Add", ["ss", "mask"], ["sm"]),
        helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["o"]),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
              for n, s in (("q", shape_q), ("k", shape_kv), ("v", shape_kv))]
    output = helper.make_tensor_value_info("o", TensorProto.FLOAT, shape_q)
    consts = [numpy_helper.from_array(np.array(d**-0.5, np.float32), "scale"), numpy_helper.from_array(mask, "mask")]
    graph = helper.make_graph(nodes, "attention", inputs, [output], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def exported_sdpa(args, is_causal, custom=False):
    """torch SDPA as an exported program: what the ExecuTorch and TVM peers compile.

    custom: ExecuTorch's fused llama.custom_sdpa kernel ([B, L, H, D] layout) instead of aten SDPA."""
    import torch

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            if custom:
                out = torch.ops.llama.custom_sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0, None,
                                                  0.0, is_causal)
                return out.transpose(1, 2)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

    if custom:
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (registers torch.ops.llama)
    return torch.export.export(Attention(), args)


def executorch_method(args, is_causal, custom=False):
    """SDPA lowered to ExecuTorch with the XNNPACK partitioner (the math decomposition XNNPACK runs, or the
    custom_sdpa kernel, which stays outside the delegate); returns a callable running it."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    program = to_edge_transform_and_lower(exported_sdpa(args, is_causal, custom),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    loaded = Runtime.get().load_program(program.buffer)
    method = loaded.load_method("forward")
    return lambda: (loaded, method.execute(list(args)))  # the program must outlive its method


def tvm_default_lowering(args, is_causal):
    """SDPA through TVM's own relax pipeline (tvm.compile defaults, no edgekit schedules or kernel)."""
    import tvm
    from tvm.relax.frontend.torch import from_exported_program

    mod = from_exported_program(exported_sdpa(args, is_causal))
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    tensors = [tvm.runtime.tensor(t.numpy()) for t in args]
    return lambda: vm["main"](*tensors)


def run(threads=2, repeat=10, peer_repeat=3):
    # Read when TVM's thread pool starts (first kernel call). TVM's default on x86 is half the
    # logical CPUs, i.e. 1 thread on a 2-vCPU machine.
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    import torch
    import torch.nn.functional as F
    import tvm

    from . import build
    from .api import attention
    from .reference import visible_keys

    torch.set_num_threads(threads)
    peak, bandwidth = sgemm_peak_gflops(torch), copy_bandwidth_gbs(torch)
    rows = []
    # The second decode case's 134 MB K/V cache does not fit in L3, so it measures DRAM streaming.
    cases = [("prefill", 8, 1024, 1024, 64, False), ("prefill causal", 8, 1024, 1024, 64, True),
             ("decode", 8, 1, 4096, 64, True), ("decode >L3", 32, 1, 4096, 128, True)]
    for name, h, lq, lk, d, causal in cases:
        b = 1
        q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)
        session = onnx_attention_session(list(q.shape), list(k.shape), causal, threads)
        feeds = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
        # SDPA's is_causal aligns top-left; that equals our bottom-right mask for Lq == Lk, and
        # a single decode query sees every key either way.
        sdpa_causal = causal and lq == lk
        impls = {
            "edgekit": (lambda: attention(q, k, v, causal=causal), repeat),
            "torch sdpa": (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=sdpa_causal), repeat),
            "onnxruntime": (lambda: session.run(None, feeds), repeat),
            "executorch xnnpack": (executorch_method((q, k, v), sdpa_causal), repeat),
            "executorch custom_sdpa": (executorch_method((q, k, v), sdpa_causal, custom=True), repeat),
        }
        if name.startswith("prefill"):  # ~2 s a call: a few runs say enough
            impls["tvm default lowering"] = (tvm_default_lowering((q, k, v), sdpa_causal), peer_repeat)
        if name == "prefill":  # the measurement behind using the micro-kernel on x86
            portable = tvm.compile(build.tir_module(build.host_target(), d), target=build.host_target())
            out = torch.empty_like(q)
            impls["edgekit TIR-only"] = (lambda: portable["attention_f32"](q, k, v, out, 0, 0, d**-0.5), repeat)
        flops = 4 * b * h * d * int(visible_keys(lq, lk, causal, None).sum())
        kv_bytes = (k.numel() + v.numel()) * 4
        times = {impl: timed(fn, reps, warmup=2 if reps == repeat else 1) for impl, (fn, reps) in impls.items()}
        best_peer = min(median for impl, (median, _) in times.items() if not impl.startswith("edgekit"))
        for impl, (seconds, fastest) in times.items():
            rows.append({
                "case": name, "impl": impl, "shape": [b, h, lq, lk, d], "ms": seconds * 1e3, "min_ms": fastest * 1e3,
                "gflops": flops / seconds / 1e9, "frac_peak": flops / seconds / 1e9 / peak,
                "kv_gbs": kv_bytes / seconds / 1e9, "frac_bandwidth": kv_bytes / seconds / 1e9 / bandwidth,
                "frac_bandwidth_fastest": kv_bytes / fastest / 1e9 / bandwidth,  # like the copy figure
                "speedup_vs_best_peer": best_peer / seconds,
            })
    return {"threads": threads, "tvm_threads": tvm.runtime.num_threads(), "sgemm_peak_gflops": peak,
            "copy_bandwidth_gbs": bandwidth, "rows": rows}


def print_table(result):
    print(f"threads={result['threads']} (TVM pool: {result['tvm_threads']})  SGEMM peak {result['sgemm_peak_gflops']:.1f} GFLOP/s  "
          f"copy bandwidth {result['copy_bandwidth_gbs']:.1f} GB/s")
    print(f"{'case':16} {'impl':19} {'ms':>9} {'GFLOP/s':>8} {'%peak':>6} {'KV GB/s':>8} {'%bw':>6} {'vs best peer':>12}")
    for r in result["rows"]:
        print(f"{r['case']:16} {r['impl']:19} {r['ms']:9.3f} {r['gflops']:8.1f} {100 * r['frac_peak']:6.1f} "
              f"{r['kv_gbs']:8.1f} {100 * r['frac_bandwidth']:6.1f} {r['speedup_vs_best_peer']:11.2f}x")


def main(argv=None):
    bench_main(__doc__, run, print_table, argv)


if __name__ == "__main__":
    main()
