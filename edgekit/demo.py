"""`make demo`: compile the bundled model for host with every backend, run it, report latency and error."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .targets import get_target


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
    for backend in get_target("host").backends:
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
    """Once the super-resolution app and its weights are present, upscale a sample image too."""
    try:
        from .apps.superres.demo import upscale_sample
    except ImportError:
        return
    upscale_sample(output / "superres", weights_dir=os.environ.get("EDGEKIT_WEIGHTS"))
