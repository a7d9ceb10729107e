"""How many CPU threads edgekit's work uses, and handing that number to every library that runs threads.

One number per process (`--threads N` on every command; default: this machine's physical cores) goes to:
- OpenMP / MKL / OpenBLAS / TVM through their environment variables, set before any of them is loaded (the CLI calls
  `apply` before importing torch, OpenCV or a runtime). OMP_WAIT_POLICY=PASSIVE: idle OpenMP workers sleep instead of
  spinning (TVM's pool likewise: TVM_THREAD_POOL_SPIN_COUNT=0), which on a machine shared with other busy processes
  is what keeps the workers from starving each other;
- torch (`set_num_threads`) and OpenCV (`cv2.setNumThreads`), when they are already imported;
- the runtimes, which read OMP_NUM_THREADS themselves (ONNX Runtime's intra-op pool, ExecuTorch's threadpool; the
  emulator passes the variable to the guest), so they stay free of edgekit imports.
A variable the caller set explicitly is left as it is.
"""
from __future__ import annotations

import os
import sys

__all__ = ["default_threads", "apply", "THREAD_VARIABLES"]

# read by OpenMP (torch, TVM's OpenMP builds), MKL, OpenBLAS, TVM's own pool, numexpr and OpenCV's pool
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")


def default_threads() -> int:
    """OMP_NUM_THREADS when set, else the physical cores this process may run on (never the hyper-threads)."""
    explicit = os.environ.get("OMP_NUM_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    import psutil

    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
    return max(1, min(physical, allowed))


def apply(threads: int) -> int:
    """Make `threads` the thread count of every library in this process (and of child processes it starts)."""
    threads = max(1, int(threads))
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")  # TVM's pool: the same, without OpenMP
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(threads)
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(threads)
    return threads

