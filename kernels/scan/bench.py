"""Selective-scan benchmark: our kernel vs plain-PyTorch peers, all measured in this run.

    python -m edgekit.kernels.scan.bench [--threads 2] [--json PATH]

Peers: the sequential PyTorch loop (reference.selective_scan_ref in float32) and the parallel
Blelloch scan (reference.parallel_scan); beside them the native C++ build of the same fused scan that ExecuTorch
artifacts ship (native.py; one thread). Bandwidth is the minimum traffic (each input read once,
each output written once) over the median time, against a large-copy bandwidth measured in the
same run; the scan is compute-bound, the state update is not.
"""

import os

from ..benchmark import copy_bandwidth_gbs, main as bench_main, timed


def _nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _scan_case(torch, batch, dim, length, n, mamba_options):
    gen = torch.Generator().manual_seed(0)
    args = dict(u=torch.randn(batch, dim, length, generator=gen),
                delta=torch.rand(batch, dim, length, generator=gen) * 0.1,
                A=-torch.rand(dim, n, generator=gen) - 0.5,
                B=torch.randn(batch, n, length, generator=gen),
                C=torch.randn(batch, n, length, generator=gen))
    if mamba_options:  # what a Mamba block passes: D skip, z gate, dt bias + softplus
        args.update(D=torch.randn(dim, generator=gen), z=torch.randn(batch, dim, length, generator=gen),
                    delta_bias=torch.randn(dim, generator=gen) * 0.1, delta_softplus=True)
    traffic = _nbytes(*(v for v in args.values() if isinstance(v, torch.Tensor))) + 4 * batch * dim * length
    return args, traffic


def _update_case(torch, batch, dim, n):
    gen = torch.Generator().manual_seed(0)
    args = dict(state=torch.randn(batch, dim, n, generator=gen), x=torch.randn(batch, dim, generator=gen),
                dt=torch.rand(batch, dim, generator=gen) * 0.1, A=-torch.rand(dim, n, generator=gen) - 0.5,
                B=torch.randn(batch, n, generator=gen), C=torch.randn(batch, n, generator=gen),
                D=torch.randn(dim, generator=gen), z=torch.randn(batch, dim, generator=gen),
                dt_bias=torch.randn(dim, generator=gen) * 0.1, dt_softplus=True)
    # state read and written, the rest read once, out written
    traffic = _nbytes(*(v for v in args.values() if isinstance(v, torch.Tensor))) + _nbytes(args["state"], args["x"])
    return args, traffic


def run(threads=2, repeat=10, peer_repeat=3):
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))  # read when TVM's thread pool starts
    import torch

    from . import native
    from .api import selective_scan, selective_state_update
    from .reference import parallel_scan, selective_scan_ref, selective_state_update_ref

    torch.set_num_threads(threads)
    bandwidth = copy_bandwidth_gbs(torch)
    rows = []

    def record(case, shape, traffic, impls):
        times = {impl: timed(fn, reps) for impl, (fn, reps) in impls.items()}
        ours, ours_min = times["edgekit"]
        for impl, (median, best) in times.items():
            gbs = traffic / median / 1e9
            # Both statistics: on a shared machine the median mostly measures the neighbours.
            rows.append({"case": case, "impl": impl, "shape": shape, "ms": median * 1e3,
                         "min_ms": best * 1e3, "gbs": gbs, "frac_bandwidth": gbs / bandwidth,
                         "edgekit_speedup": median / ours, "edgekit_speedup_min": best / ours_min})

    # The acceptance shape (plain and with Mamba's options), then a Mamba-2-sized state.
    for name, (batch, dim, length, n), mamba in (("scan", (1, 512, 1024, 16), False),
                                                 ("scan mamba opts", (1, 512, 1024, 16), True),
                                                 ("scan N=128", (1, 128, 1024, 128), False)):
        args, traffic = _scan_case(torch, batch, dim, length, n, mamba)
        record(name, [batch, dim, length, n], traffic, {
            "edgekit": (lambda: selective_scan(**args), repeat),
            "edgekit native C++": (lambda: native.selective_scan(**args), repeat),
            "sequential loop": (lambda: selective_scan_ref(**args, dtype=torch.float32), peer_repeat),
            "parallel scan": (lambda: parallel_scan(**args), peer_repeat),
        })

    # 256 x 4096 x 16 fp32 state = 67 MB, twice the L3: each step streams it from DRAM.
    args, traffic = _update_case(torch, 256, 4096, 16)
    record("state update", [256, 4096, 16], traffic, {
        "edgekit": (lambda: selective_state_update(**args), repeat),
        "pytorch": (lambda: selective_state_update_ref(**args, dtype=torch.float32), repeat),
    })
    return {"threads": threads, "copy_bandwidth_gbs": bandwidth, "rows": rows}


def print_table(result):
    print(f"threads={result['threads']}  copy bandwidth {result['copy_bandwidth_gbs']:.1f} GB/s")
    print(f"{'case':16} {'impl':16} {'median ms':>10} {'min ms':>9} {'GB/s':>7} {'%bw':>6} "
          f"{'edgekit faster (median / min)':>30}")
    for r in result["rows"]:
        edge = "" if r["impl"] == "edgekit" else \
            f"{r['edgekit_speedup']:.1f}x / {r['edgekit_speedup_min']:.1f}x"
        print(f"{r['case']:16} {r['impl']:16} {r['ms']:10.3f} {r['min_ms']:9.3f} {r['gbs']:7.2f} "
              f"{100 * r['frac_bandwidth']:6.1f} {edge:>30}")


def main(argv=None):
    bench_main(__doc__, run, print_table, argv)


if __name__ == "__main__":
    main()
