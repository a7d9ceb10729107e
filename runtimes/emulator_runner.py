"""Device-side entry point: run one artifact with the backend's own runtime module.

Runs inside the aarch64 emulator (or on a Linux board) with only numpy, the runtime wheels and
edgekit's device-safe files on the path, so the numbers come from the same code a device runs:

    python3 -m edgekit.runtimes.emulator_runner ARTIFACT INPUTS.npz OUTPUTS.npz [--iters N --stats S.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edgekit import backends
from edgekit.artifact import read_verified
from edgekit.runtimes.base import benchmark


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("artifact", type=Path)
    p.add_argument("inputs", type=Path)
    p.add_argument("outputs", type=Path)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=0, help="> 0: also time the model and write --stats")
    p.add_argument("--stats", type=Path)
    args = p.parse_args()

    artifact = read_verified(args.artifact)  # the guest's private copy of the host-verified bytes, checked again
    manifest = artifact.manifest
    runtime = backends.get(manifest.backend).runtime_module()
    handle = runtime.load(args.artifact, manifest, payload=artifact.payload)
    with np.load(args.inputs) as f:
        inputs = [f[f"in{i}"] for i in range(len(f.files))]
    outputs = runtime.run(handle, inputs)
    np.savez(args.outputs, **{f"out{i}": o for i, o in enumerate(outputs)})
    if args.iters > 0:
        stats = benchmark(lambda xs: runtime.run(handle, xs), inputs, warmup=args.warmup, iters=args.iters)
        args.stats.write_text(json.dumps(stats))


if __name__ == "__main__":
    main()
