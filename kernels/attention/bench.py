"""Attention benchmark: our kernel vs torch SDPA, ONNX Runtime and ExecuTorch, all measured in this run.

    python -m edgekit.kernels.attention.bench [--threads 2] [--json PATH]

Reports GFLOP/s against this machine's SGEMM peak (torch.mm, same run) for prefill and the
achieved K/V read bandwidth against a large-copy bandwidth measurement for decode.
"""

import argparse
import json
import os
import statistics
import time


def _seconds(fn, repeat, stat=statistics.median, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return stat(times)


# Peak and bandwidth take the fastest run (the machine's capability); kernels the median run.
def sgemm_peak_gflops(torch, n=2048):
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _seconds(lambda: torch.mm(a, b), repeat=10, stat=min) / 1e9


def copy_bandwidth_gbs(torch, mib=512):
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _seconds(lambda: dst.copy_(src), repeat=10, stat=min) / 1e9  # read + write


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


def executorch_program(args, is_causal):
    """SDPA exported with torch.export and lowered to ExecuTorch with the XNNPACK partitioner."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

    program = to_edge_transform_and_lower(torch.export.export(Attention(), args),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    return Runtime.get().load_program(program.buffer)


def run(threads=2, repeat=10):
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
        et_program = executorch_program((q, k, v), sdpa_causal)  # must outlive its methods
        et_method = et_program.load_method("forward")
        impls = {
            "edgekit": lambda: attention(q, k, v, causal=causal),
            "torch sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=sdpa_causal),
            "onnxruntime": lambda: session.run(None, feeds),
            "executorch xnnpack": lambda: et_method.execute([q, k, v]),
        }
        if name == "prefill":  # the measurement behind using the micro-kernel on x86
            portable = tvm.compile(build.tir_module(build.host_target(), d), target=build.host_target())
            out = torch.empty_like(q)
            impls["edgekit TIR-only"] = lambda: portable["attention_f32"](q, k, v, out, 0, 0, d**-0.5)
        flops = 4 * b * h * d * int(visible_keys(lq, lk, causal, None).sum())
        kv_bytes = (k.numel() + v.numel()) * 4
        times = {impl: _seconds(fn, repeat) for impl, fn in impls.items()}
        best_peer = min(t for impl, t in times.items() if not impl.startswith("edgekit"))
        for impl, seconds in times.items():
            rows.append({
                "case": name, "impl": impl, "shape": [b, h, lq, lk, d], "ms": seconds * 1e3,
                "gflops": flops / seconds / 1e9, "frac_peak": flops / seconds / 1e9 / peak,
                "kv_gbs": kv_bytes / seconds / 1e9, "frac_bandwidth": kv_bytes / seconds / 1e9 / bandwidth,
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    result = run(args.threads, args.repeat)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
