"""`edgekit pose run|live|eval-3d`: BlazePose keypoints and KTPFormer 3D joints on an image, a video or a camera,
with a skeleton overlay; the 3D lifters measured on held-out synthetic motion."""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from edgekit.apps.pose.app import PoseApp, TrackLifter, draw
from edgekit.apps.pose.model import BlazePose, lifter_runner, runners
from edgekit.apps.media import check_image
from edgekit.apps.runners import add_backend_arguments
from edgekit.apps.progress import JsonLines
from edgekit.apps.video import (IMAGE_SUFFIXES, Sink, add_run_and_live, frame_count, live_overlay, open_video,
                               run_frames)
from edgekit.errors import EdgekitError


def register(subparsers) -> None:
    pose = subparsers.add_parser("pose", help="BlazePose 2D keypoints and 3D joints on images, videos, cameras")
    commands = pose.add_subparsers(dest="pose_command", metavar="COMMAND", required=True)

    run = add_run_and_live(commands, _common_options, run_command, live_command,
                           run_help="keypoints for every frame of an image or video, with an overlay",
                           input_help="image or video file",
                           output_help="overlay to write: .png/.jpg for an image, .mp4 for a video",
                           json_help="print JSON lines on stdout as frames are done: one object per frame "
                                     "(keypoints, 3D joints), then a summary object",
                           frames_help="stop after this many video frames")
    run.add_argument("--lifter", help="3D lifter weights (default: the shipped KTPFormer, apps/pose/weights)")

    ev = commands.add_parser("eval-3d", help="MPJPE and jitter of the 3D lifters on held-out synthetic motion")
    ev.add_argument("--sequences", type=int, default=48, help="held-out sequences (120-300 frames each)")
    ev.add_argument("--seed", type=int, help="generator seed of the held-out set (default: the eval stream, "
                                             "disjoint from training)")
    ev.add_argument("--lifter", help="KTPFormer weights (default: apps/pose/weights/ktpformer.pt)")
    ev.add_argument("--baseline", help="single-frame MLP weights (default: apps/pose/weights/mlp_lifter.pt)")
    add_backend_arguments(ev, "where KTPFormer runs")
    ev.add_argument("--json", action="store_true", help="print the figures as one JSON summary object")
    ev.set_defaults(func=eval_3d_command)


def _common_options(parser: argparse.ArgumentParser) -> None:
    add_backend_arguments(parser, "eager runs the imported torch modules; the others compile them for this host once",
                          "folder with pose_detection.tflite and pose_landmark_full.tflite "
                          "(default: $EDGEKIT_WEIGHTS/mediapipe)")
    parser.add_argument("--tiles", default="auto", type=_tiles,
                        help="detector view: ROWSxCOLS, a grid of overlapping tiles used as given (more tiles find "
                             "smaller, distant persons); auto, the whole frame plus a grid of about 224 px cells "
                             "(3x4 for 768x576), so near and distant persons are both found (default: %(default)s)")
    parser.add_argument("--detect-every", type=int, default=5,
                        help="run the detector every N frames to find new persons (tracked ones need none)")
    parser.add_argument("--max-persons", type=int, default=8, help="most persons tracked per frame")


def _tiles(text: str) -> tuple[int, int] | str:
    if text == "auto":
        return text
    rows, _, cols = text.partition("x")
    if not (rows.isdigit() and cols.isdigit() and int(rows) > 0 and int(cols) > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto or ROWSxCOLS, e.g. 3x4")
    return int(rows), int(cols)


def build_app(args) -> PoseApp:
    detector, landmarker = runners(BlazePose.from_pretrained(args.weights), args.backend, args.artifacts)
    return PoseApp(detector, landmarker, max_persons=args.max_persons, detect_every=args.detect_every,
                   tiles=args.tiles)


def run_command(args) -> int:
    source = Path(args.input)
    if not source.is_file():
        raise EdgekitError(f"{source} not found. Pass an image or video file.")
    is_image = source.suffix.lower() in IMAGE_SUFFIXES
    if args.output and Path(args.output).suffix.lower() not in (IMAGE_SUFFIXES if is_image else {".mp4", ".avi"}):
        raise EdgekitError(f"-o {args.output}: use {'.png or .jpg' if is_image else '.mp4'} for this input.")
    if is_image:
        check_image(source)  # refused before the models load
    app = build_app(args)
    lift = TrackLifter(*lifter_runner(args.backend, args.artifacts, args.lifter))
    frames, fps = (iter([_read_image(source)]), 0.0) if is_image else open_video(str(source))

    def step(index, frame):
        persons = app(frame)
        joints = lift(persons)
        found = [{"keypoints_2d": _rounded(p.keypoints), "joints_3d": np.round(j, 3).tolist()}
                 for p, j in zip(persons, joints)]
        return {"frame": index, "persons": found}, draw(frame, persons)

    lines = JsonLines(args.json)
    records, elapsed = run_frames(frames, args.max_frames, step, Sink(args.output, fps, default_fps=10.0),
                                  name="pose run", total=1 if is_image else frame_count(str(source)),
                                  json_lines=lines)
    if not records:
        raise EdgekitError(f"{source}: no frames could be read. Check that the file is a readable video.")
    persons = sum(len(r["persons"]) for r in records)
    fps = len(records) / elapsed
    lines.summary({"frames": len(records), "person_detections": persons, "fps": round(fps, 3),
                   "backend": args.backend, "output": args.output})
    print(f"pose: {len(records)} frames, {persons} person detections, {fps:.2f} FPS "
          f"({args.backend}, 2D + 3D)" + (f"; overlay: {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def live_command(args) -> int:
    return live_overlay(args, "pose", lambda: build_app(args), draw, default_fps=30.0)


def eval_3d_command(args) -> int:
    from edgekit.apps.pose import eval as pose_eval
    from edgekit.apps.pose import lifter as lifting

    if args.sequences < 1:
        raise EdgekitError("--sequences must be at least 1.")
    ktpformer, frames, _ = lifter_runner(args.backend, args.artifacts, args.lifter)
    mlp = lifting.load(args.baseline or lifting.MLP_WEIGHTS)
    data = pose_eval.held_out(args.sequences, **({} if args.seed is None else {"seed": args.seed}))
    if args.backend == "eager":
        lift = lambda x: ktpformer(x)[0]  # noqa: E731
    else:  # artifacts take the example's batch of one window
        lift = lambda x: np.concatenate([ktpformer(w[None])[0] for w in x])  # noqa: E731
    results = pose_eval.evaluate({"ktpformer": (lift, frames),
                                  "mlp": (pose_eval.torch_lift(mlp), mlp.frames)}, data)
    results["ktpformer"]["backend"] = args.backend
    JsonLines(args.json).summary(results)
    if not args.json:
        for name in ("ktpformer", "mlp"):
            r = results[name]
            print(f"{name}: MPJPE {r['mpjpe_mm']:.1f} mm, jitter {r['jitter_mm_per_frame2']:.2f} mm/frame^2, "
                  f"acceleration error {r['acceleration_error_mm_per_frame2']:.2f} mm/frame^2")
        print(f"ground truth jitter {results['ground_truth']['jitter_mm_per_frame2']:.2f} mm/frame^2 "
              f"({results['data']['sequences']} sequences, {results['data']['frames']} frames)")
    return 0


def _read_image(path: Path) -> np.ndarray:
    check_image(path)  # the header's size before decoding
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise EdgekitError(f"{path}: not a readable image.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _rounded(keypoints: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 1), round(float(y), 1), round(float(v), 3)] for x, y, v in keypoints]
