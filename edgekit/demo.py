"""`make demo`: compile the bundled model for host with every backend, run it, report latency and error; then
upscale a sample photo with CFSR when its weights are found. Steps go to edgekit's logger (stderr, `-q` hides them),
the results table to stdout."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from . import backends, paths

log = logging.getLogger("edgekit.demo")

TITLE = "bundled model (Conv2d + LayerNorm + MultiheadAttention + GELU), target host"


def short(path) -> str:
    """`path` as a person would type it here: relative to the current folder when inside it, else with ~ for home."""
    path = Path(path).absolute()
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            return prefix + str(path.relative_to(base)) if path != base else (prefix.rstrip("/") or ".")
        except ValueError:
            continue
    return str(path)


def run(output: Path) -> int:
    from . import load
    from .compile import compile_model
    from .zoo import conv_attention

    module, inputs = conv_attention()
    expected = module(*inputs).detach().numpy()
    rows = []
    for backend in backends.for_target("host"):
        log.info("%s: compiling, verifying against eager PyTorch, timing", backend)
        art = compile_model(module, inputs, target="host", backend=backend, output=output / backend, force=True,
                            name="conv_attention", progress=False)
        model = load(art, trust=False)  # compiled just now, by this process
        got = model.run([inputs[0].numpy()])[0]
        stats = model.benchmark(warmup=3, iters=30)
        rows.append((backend, f"{stats['p50_ms']:.3f}", f"{stats['min_ms']:.3f}",
                     f"{np.abs(got - expected).max():.2e}", short(art)))
    _print_table(TITLE, ("backend", "p50 ms", "min ms", "max abs err vs eager", "artifact"), rows)
    _superres_sample(output)
    return 0


def _print_table(title: str, columns, rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(width=max(120, _terminal_width())).print(table)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:  # not a terminal: a log or a pipe
        return 0


def _superres_sample(output: Path) -> None:
    """Upscale a sample image x4 with CFSR when its weights are found (`edgekit paths`)."""
    from .apps.superres.demo import upscale_file

    weights = paths.weights("cfsr", "CFSR_x4.pth")
    if not weights.is_file():
        log.info("super-resolution sample skipped: no CFSR weights at %s (record the weights folder with "
                 "`edgekit paths --set weights=DIR`).", short(weights))
        return
    from skimage import data as samples
    import cv2

    output.mkdir(parents=True, exist_ok=True)
    src = output / "sample.png"  # scikit-image's astronaut photo (public domain, NASA), downscaled x4
    rgb = samples.astronaut()
    small = cv2.resize(rgb, (rgb.shape[1] // 4, rgb.shape[0] // 4), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(src), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    rows = []
    for backend in ("eager", "onnxruntime"):
        log.info("super-resolution x4 with %s%s", backend, "" if backend == "eager" else " (compiled on first use)")
        t0 = time.perf_counter()
        dst = upscale_file(src, output / f"sample_x4_{backend}.png", scale=4, backend=backend, weights=weights)
        rows.append((backend, f"{small.shape[1]}x{small.shape[0]} -> {small.shape[1] * 4}x{small.shape[0] * 4}",
                     f"{time.perf_counter() - t0:.2f}", short(dst)))
    _print_table(f"CFSR x4 on {short(src)} (a compiled backend's first run includes compiling)",
                 ("backend", "size", "seconds", "output"), rows)
