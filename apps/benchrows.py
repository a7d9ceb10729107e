"""Frames-per-second rows of a whole app pipeline for `edgekit bench --suite all` (apps' bench.py AppCases)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .runners import BACKENDS
from .spec import AppCase


def video_case(case: str, video: Path, frames: int, warmup: int, stepper) -> list[AppCase]:
    """[the AppCase timing a whole app on `video`], or [] when the file is missing; `stepper()` -> make_step (below),
    called only when the case runs."""
    if not video.is_file():
        return []
    return [AppCase(case, lambda workdir, progress: app_fps_rows(case, video, frames, warmup, None, stepper(),
                                                                 workdir, progress))]


def app_fps_rows(case: str, video: Path, frames: int, warmup: int, backends: tuple[str, ...] | None, make_step,
                 workdir: Path, progress) -> list[dict]:
    """Frames per second of an app on the first `warmup + frames` frames of `video` (none: no rows):
    `make_step(backend, artifacts)` -> step(frame) -> items found, timed per frame after `warmup` untimed frames,
    the same frames for every backend (default: eager and every registered backend), compiled artifacts from the
    compiled-model cache (`workdir`: another cache folder; None: the shared one). Peers: eager on the suite's threads and on one thread; each row's mean frame time (1 / FPS) is
    divided by the faster peer's."""
    import torch

    from .video import limit, open_video

    backends = backends or BACKENDS
    frames = list(limit(open_video(str(video))[0], warmup + frames))
    if len(frames) < warmup + 1:
        return []
    artifacts = workdir  # the compiled-model cache folder (None: the shared one)
    threads = torch.get_num_threads()
    timings, found = {}, {}
    for impl, backend, torch_threads in [("eager", "eager", threads), ("eager 1 thread", "eager", 1),
                                         *((b, b, threads) for b in backends if b != "eager")]:
        progress(f"{case}: {impl}")
        torch.set_num_threads(torch_threads)
        try:
            step = make_step(backend, artifacts)
            times, items = [], 0
            for index, frame in enumerate(frames):
                start = time.perf_counter()
                n = step(frame)
                if index >= warmup:
                    times.append((time.perf_counter() - start) * 1e3)
                    items += n
        finally:
            torch.set_num_threads(threads)
        timings[impl], found[impl] = np.asarray(times), items / len(times)
    best_peer = min(("eager", "eager 1 thread"), key=lambda k: timings[k].mean())
    shape = [[len(frames) - warmup, *frames[0].shape]]
    return [{"suite": "app", "case": case, "impl": impl, "precision": "fp32", "shape": shape,
             "p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)), "min_ms": float(t.min()),
             "mean_ms": float(t.mean()), "fps": float(1e3 / t.mean()), "found_per_frame": found[impl],
             "payload_bytes": None, "peer": f"{best_peer} fp32",
             "ratio_to_best_peer": float(t.mean() / timings[best_peer].mean())}
            for impl, t in timings.items()]
