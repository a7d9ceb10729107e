"""`make bench` cases: the chimp detector (3-frame clip) and the behavior transformer, shipped weights; and
the whole app (detector + decoding + tracker + behavior head) on demo.mp4 frames, in FPS per backend."""
from __future__ import annotations

from pathlib import Path

from edgekit import paths
from edgekit.apps.benchrows import app_fps_rows, video_case
from edgekit.apps.spec import ModelCase

APP_FRAMES = 60   # timed frames of demo.mp4 per backend
WARMUP = 10       # untimed frames first: fills the clip and confirms the tracks, so the behavior head runs


def cases() -> list:
    from .model import compile_models

    models = [ModelCase.from_spec(f"chimp_{name}", build()) for name, build in compile_models().items()]
    return models + video_case("chimp_app", paths.data("chimp", "demo.mp4"), APP_FRAMES, WARMUP, stepper)


def stepper():
    """make_step(backend, artifacts) -> step(frame) -> tracks, as `edgekit chimp run` times a frame (app(frame): no
    decoding, no drawing)."""
    from .model import ChimpModel
    from .runners import build_app

    model = ChimpModel.load()

    def make_step(backend, artifacts):
        app = build_app(model, backend, artifacts)
        return lambda frame: len(app(frame))
    return make_step


def app_rows(video: Path, workdir: Path, progress, backends: tuple[str, ...] | None = None) -> list[dict]:
    """FPS rows of the whole app on `video`; found_per_frame: tracks per frame."""
    return app_fps_rows("chimp_app", video, APP_FRAMES, WARMUP, backends, stepper(), workdir, progress)
