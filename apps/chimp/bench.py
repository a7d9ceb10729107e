"""`make bench` cases: the chimp detector (3-frame clip) and the behavior transformer, shipped weights; and
the whole app (detector + decoding + tracker + behavior head) on demo.mp4 frames, in FPS per backend."""
from __future__ import annotations

from pathlib import Path

from edgekit import paths
from edgekit.apps.spec import AppCase, ModelCase

APP_FRAMES = 60   # timed frames of demo.mp4 per backend
WARMUP = 10       # untimed frames first: fills the clip and confirms the tracks, so the behavior head runs


def cases() -> list:
    from .model import compile_models

    cases = [ModelCase.from_spec(f"chimp_{name}", build()) for name, build in compile_models().items()]
    video = paths.data("chimp", "demo.mp4")
    if video.is_file():
        cases.append(AppCase("chimp_app", lambda workdir, progress: app_rows(video, workdir, progress)))
    return cases


def app_rows(video: Path, workdir: Path, progress, backends: tuple[str, ...] | None = None) -> list[dict]:
    """Frames per second of the app as `edgekit chimp run` times it (app(frame) per frame: no decoding, no
    drawing); found_per_frame: tracks per frame."""
    from edgekit.apps.benchrows import app_fps_rows

    from .model import ChimpModel
    from .runners import BACKENDS, build_app

    model = ChimpModel.load()

    def make_step(backend, artifacts):
        app = build_app(model, backend, artifacts)
        return lambda frame: len(app(frame))

    return app_fps_rows("chimp_app", video, APP_FRAMES, WARMUP, backends or BACKENDS, make_step, workdir, progress)
