"""`make bench` cases: BlazePose's detector and full landmark networks (imported from TFLite), the KTPFormer lifter,
and the whole app (detector tiles + landmarks + tracking + 3D lifting) on vtest.avi frames, in FPS per backend."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

APP_FRAMES = 30    # timed frames of vtest.avi per backend
WARMUP = 5         # untimed frames first (compiled runners load, tracks start)
TILES, DETECT_EVERY = (3, 4), 10  # the README's settings for vtest.avi's 70-100 px pedestrians


def cases() -> list:
    from edgekit.benchsuite import AppCase, ModelCase

    from .model import DETECTOR_FILE, compile_models

    have_blazepose = (Path(os.environ.get("EDGEKIT_WEIGHTS", "")) / "mediapipe" / DETECTOR_FILE).is_file()
    cases = []
    for name, build in compile_models().items():
        if name != "lifter" and not have_blazepose:
            continue
        module, inputs, options = build()
        label = "ktpformer_lifter" if name == "lifter" else f"blazepose_{name}"
        cases.append(ModelCase(label, module, inputs, options=options))
    video = Path(os.environ.get("EDGEKIT_DATA", "")) / "pose" / "vtest.avi"
    if have_blazepose and video.is_file():
        cases.append(AppCase("pose_app", lambda workdir, progress: app_rows(video, workdir, progress)))
    return cases


def app_rows(video: Path, workdir: Path, progress, backends: tuple[str, ...] | None = None) -> list[dict]:
    """Frames per second of the app as `edgekit pose run` times it (2D app + 3D lifter per frame: no decoding, no
    drawing), on the same WARMUP + APP_FRAMES frames for every backend. Peers: eager on the suite's threads and on
    one thread; each row's mean frame time (1 / FPS) is divided by the faster peer's."""
    import torch

    from edgekit.apps.video import limit, open_video

    from .app import PoseApp, TrackLifter
    from .model import BACKENDS, BlazePose, lifter_runner, runners

    frames = list(limit(open_video(str(video))[0], WARMUP + APP_FRAMES))
    if len(frames) < WARMUP + 1:
        return []
    blazepose = BlazePose.from_pretrained()
    artifacts = workdir / "pose_app"
    shutil.rmtree(artifacts, ignore_errors=True)  # compiled in this run, like every other case
    threads = torch.get_num_threads()
    timings, persons = {}, {}
    for impl, backend, torch_threads in [("eager", "eager", threads), ("eager 1 thread", "eager", 1),
                                         *((b, b, threads) for b in backends or BACKENDS if b != "eager")]:
        progress(f"pose_app: {impl}")
        torch.set_num_threads(torch_threads)
        try:
            app = PoseApp(*runners(blazepose, backend, artifacts), detect_every=DETECT_EVERY, tiles=TILES)
            lift = TrackLifter(*lifter_runner(backend, artifacts))
            times, found = [], 0
            for index, frame in enumerate(frames):
                start = time.perf_counter()
                people = app(frame)
                lift(people)
                if index >= WARMUP:
                    times.append((time.perf_counter() - start) * 1e3)
                    found += len(people)
        finally:
            torch.set_num_threads(threads)
        timings[impl], persons[impl] = np.asarray(times), found / len(times)
    peers = ("eager", "eager 1 thread")
    best_peer = min(peers, key=lambda k: timings[k].mean())
    shape = [[len(frames) - WARMUP, *frames[0].shape]]
    return [{"suite": "app", "case": "pose_app", "impl": impl, "precision": "fp32", "shape": shape,
             "p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)), "min_ms": float(t.min()),
             "mean_ms": float(t.mean()), "fps": float(1e3 / t.mean()), "persons_per_frame": persons[impl],
             "payload_bytes": None, "peer": f"{best_peer} fp32",
             "ratio_to_best_peer": float(t.mean() / timings[best_peer].mean())}
            for impl, t in timings.items()]
