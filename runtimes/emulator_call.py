"""Device-side entry point: call functions of compiled TVM libraries on numpy arrays.

Proves kernels (not whole artifacts) on the emulated CPU. The calls come as a JSON list; array
arguments name entries of an .npz, the rest are passed as numbers. Arrays listed in a call's
"outputs" are written back after the call (the kernels write their results into argument buffers):

    python3 -m edgekit.runtimes.emulator_call CALLS.json ARRAYS.npz RESULTS.npz
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tvm


def main(calls_json: str, arrays_npz: str, results_npz: str) -> None:
    calls = json.loads(Path(calls_json).read_text())
    modules = {path: tvm.runtime.load_module(path) for path in {call["library"] for call in calls}}
    results = {}
    with np.load(arrays_npz) as arrays:
        for i, call in enumerate(calls):
            args = [tvm.runtime.tensor(np.ascontiguousarray(arrays[a["array"]])) if "array" in a else a["value"]
                    for a in call["args"]]
            modules[call["library"]][call["symbol"]](*args)
            for j in call["outputs"]:
                results[f"call{i}_arg{j}"] = args[j].numpy()
    np.savez(results_npz, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
