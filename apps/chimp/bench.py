"""`make bench` cases: the chimp detector (3-frame clip) and the behavior transformer, shipped weights; and
the whole app (detector + decoding + tracker + behavior head) on demo.mp4 frames, in FPS per backend."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

APP_FRAMES = 60   # timed frames of demo.mp4 per backend
WARMUP = 10       # untimed frames first: fills the clip and confirms the tracks, so the behavior head runs


def cases() -> list:
    from edgekit.benchsuite import AppCase, ModelCase

    from .model import compile_models

    cases = []
    for name, build in compile_models().items():
        module, inputs, options = build()
        cases.append(ModelCase(f"chimp_{name}", module, inputs, options=options))
    video = Path(os.environ.get("EDGEKIT_DATA", "")) / "chimp" / "demo.mp4"
    if video.is_file():
        cases.append(AppCase("chimp_app", lambda workdir, progress: app_rows(video, workdir, progress)))
    return cases


def app_rows(video: Path, workdir: Path, progress, backends: tuple[str, ...] | None = None) -> list[dict]:
    """Frames per second of the app as `edgekit chimp run` times it (app(frame) per frame: no decoding, no
    drawing), on the same WARMUP + APP_FRAMES frames for every backend. Peers: eager on the suite's threads
    and on one thread (`chimp run`'s default for eager); each row's mean frame time (1 / FPS) is divided by
    the faster peer's."""
    import torch

    from edgekit.apps.video import limit, open_video

    from .model import ChimpModel
    from .runners import BACKENDS, build_app

    frames = list(limit(open_video(str(video))[0], WARMUP + APP_FRAMES))
    if len(frames) < WARMUP + 1:
        return []
    model = ChimpModel.load()
    artifacts = workdir / "chimp_app"
    shutil.rmtree(artifacts, ignore_errors=True)  # compiled in this run, like every other case
    threads = torch.get_num_threads()
    timings = {}
    for impl, backend, torch_threads in [("eager", "eager", threads), ("eager 1 thread", "eager", 1),
                                         *((b, b, threads) for b in backends or BACKENDS if b != "eager")]:
        progress(f"chimp_app: {impl}")
        torch.set_num_threads(torch_threads)
        try:
            app = build_app(model, backend, artifacts)
            times = []
            for index, frame in enumerate(frames):
                start = time.perf_counter()
                app(frame)
                if index >= WARMUP:
                    times.append((time.perf_counter() - start) * 1e3)
        finally:
            torch.set_num_threads(threads)
        timings[impl] = np.asarray(times)
    peers = ("eager", "eager 1 thread")
    best_peer = min(peers, key=lambda k: timings[k].mean())
    shape = [[len(frames) - WARMUP, *frames[0].shape]]
    return [{"suite": "app", "case": "chimp_app", "impl": impl, "precision": "fp32", "shape": shape,
             "p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)), "min_ms": float(t.min()),
             "mean_ms": float(t.mean()), "fps": float(1e3 / t.mean()), "payload_bytes": None,
             "peer": f"{best_peer} fp32", "ratio_to_best_peer": float(t.mean() / timings[best_peer].mean())}
            for impl, t in timings.items()]
