"""`make bench` cases: BlazePose's detector and full landmark networks (imported from TFLite), the KTPFormer lifter,
and the whole app (detector views + landmarks + tracking + 3D lifting) on vtest.avi frames, in FPS per backend."""
from __future__ import annotations

from pathlib import Path

from edgekit import paths
from edgekit.apps.benchrows import app_fps_rows, video_case
from edgekit.apps.spec import ModelCase

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
    if have_blazepose:
        cases += video_case("pose_app", paths.data("pose", "vtest.avi"), APP_FRAMES, WARMUP, stepper)
    return cases


def stepper():
    """make_step(backend, artifacts) -> step(frame) -> persons, as `edgekit pose run` times a frame (2D app + 3D
    lifter: no decoding, no drawing)."""
    from .app import PoseApp, TrackLifter
    from .model import BlazePose, lifter_runner, runners

    blazepose = BlazePose.from_pretrained()

    def make_step(backend, artifacts):
        app = PoseApp(*runners(blazepose, backend, artifacts), detect_every=DETECT_EVERY)
        lift = TrackLifter(*lifter_runner(backend, artifacts))

        def step(frame):
            people = app(frame)
            lift(people)
            return len(people)
        return step
    return make_step


def app_rows(video: Path, workdir: Path, progress, backends: tuple[str, ...] | None = None) -> list[dict]:
    """FPS rows of the whole app on `video`; found_per_frame: persons per frame."""
    return app_fps_rows("pose_app", video, APP_FRAMES, WARMUP, backends, stepper(), workdir, progress)
