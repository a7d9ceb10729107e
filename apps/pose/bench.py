"""`make bench` cases: BlazePose's detector and full landmark networks (imported from TFLite), the KTPFormer lifter,
and the whole app (detector views + landmarks + tracking + 3D lifting) on vtest.avi frames, in FPS per backend."""
from __future__ import annotations

from pathlib import Path

from edgekit import paths
from edgekit.apps.spec import AppCase, ModelCase

APP_FRAMES = 30    # timed frames of vtest.avi per backend
WARMUP = 5         # untimed frames first (compiled runners load, tracks start)
DETECT_EVERY = 10  # detector views: the app's default (tiles="auto": whole frame + 3x4 grid on vtest.avi)


def cases() -> list:
    from .model import DETECTOR_FILE, compile_models

    have_blazepose = paths.weights("mediapipe", DETECTOR_FILE).is_file()
    cases = []
    for name, build in compile_models().items():
        if name != "lifter" and not have_blazepose:
            continue
        label = "ktpformer_lifter" if name == "lifter" else f"blazepose_{name}"
        cases.append(ModelCase.from_spec(label, build()))
    video = paths.data("pose", "vtest.avi")
    if have_blazepose and video.is_file():
        cases.append(AppCase("pose_app", lambda workdir, progress: app_rows(video, workdir, progress)))
    return cases


def app_rows(video: Path, workdir: Path, progress, backends: tuple[str, ...] | None = None) -> list[dict]:
    """Frames per second of the app as `edgekit pose run` times it (2D app + 3D lifter per frame: no decoding, no
    drawing); found_per_frame: persons per frame."""
    from edgekit.apps.benchrows import app_fps_rows

    from .app import PoseApp, TrackLifter
    from .model import BACKENDS, BlazePose, lifter_runner, runners

    blazepose = BlazePose.from_pretrained()

    def make_step(backend, artifacts):
        app = PoseApp(*runners(blazepose, backend, artifacts), detect_every=DETECT_EVERY)
        lift = TrackLifter(*lifter_runner(backend, artifacts))

        def step(frame):
            people = app(frame)
            lift(people)
            return len(people)
        return step

    return app_fps_rows("pose_app", video, APP_FRAMES, WARMUP, backends or BACKENDS, make_step, workdir, progress)
