"""`make demo`: compile the bundled model for host with every backend, run it, report latency and error."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import backends, paths


def run(output: Path) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import load
    from .compile import compile_model
    from .zoo import conv_attention

    module, inputs = conv_attention()
    expected = module(*inputs).detach().numpy()
    table = Table(title="bundled model (Conv2d + LayerNorm + MultiheadAttention + GELU), target host")
    for col in ("backend", "p50 ms", "min ms", "max abs err vs eager", "artifact"):
        table.add_column(col)
    for backend in backends.for_target("host"):
        art = compile_model(module, inputs, target="host", backend=backend, output=output / backend, force=True,
                            name="conv_attention", progress=True)
        model = load(art)
        got = model.run([inputs[0].numpy()])[0]
        stats = model.benchmark(warmup=3, iters=30)
        table.add_row(backend, f"{stats['p50_ms']:.3f}", f"{stats['min_ms']:.3f}",
                      f"{np.abs(got - expected).max():.2e}", str(art))
    Console().print(table)
    _superres_sample(output)
    return 0


def _superres_sample(output: Path) -> None:
    """Upscale a sample image x4 with CFSR when its weights are available (EDGEKIT_WEIGHTS)."""
    from rich.console import Console

    from .apps.superres.demo import upscale_file

    console = Console()
    weights = paths.weights("cfsr", "CFSR_x4.pth")
    if not weights.is_file():
        console.print(f"super-resolution sample skipped: no CFSR weights at {weights} (set EDGEKIT_WEIGHTS).")
        return
    from skimage import data as samples
    import cv2

    output.mkdir(parents=True, exist_ok=True)
    src = output / "sample.png"  # scikit-image's astronaut photo (public domain, NASA), downscaled x4
    rgb = samples.astronaut()
    small = cv2.resize(rgb, (rgb.shape[1] // 4, rgb.shape[0] // 4), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(src), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    for backend in ("eager", "onnxruntime"):
        t0 = time.perf_counter()
        dst = upscale_file(src, output / f"sample_x4_{backend}.png", scale=4, backend=backend, weights=weights)
        console.print(f"super-resolution ({backend}): {src} {small.shape[1]}x{small.shape[0]} -> {dst} "
                      f"in {time.perf_counter() - t0:.2f} s (first run includes compiling)")
