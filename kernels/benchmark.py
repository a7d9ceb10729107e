"""What the kernel benchmarks share: timing, this machine's limits (SGEMM peak, copy bandwidth), the CLI.

The limits take the fastest run (what the machine can do); kernels and peers report the median and
the fastest run (on a shared machine the median mostly measures the neighbours).
"""

import argparse
import json
import statistics
import time


def timed(fn, repeat, warmup=1):
    """(median, min) seconds of fn() over `repeat` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def sgemm_peak_gflops(torch, n=2048):
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timed(lambda: torch.mm(a, b), repeat=10)[1] / 1e9


def copy_bandwidth_gbs(torch, mib=512):
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timed(lambda: dst.copy_(src), repeat=10)[1] / 1e9  # read + write


def main(doc, run, print_table, argv=None):
    """`python -m edgekit.kernels.X.bench [--threads N] [--repeat N] [--json PATH]`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch and TVM threads")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs of each kernel")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    result = run(args.threads, args.repeat)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
