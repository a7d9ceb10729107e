"""`edgekit chimp run|live|eval|synth`: chimpanzee tracking and behavior recognition on videos and cameras."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2

from edgekit.apps.video import LiveSource, Sink, add_live_arguments, limit, open_video, show
from edgekit.errors import EdgekitError

VIDEO_SUFFIXES = {".mp4", ".avi"}


def register(subparsers) -> None:
    chimp = subparsers.add_parser("chimp", help="chimpanzee tracking and behavior recognition")
    commands = chimp.add_subparsers(dest="chimp_command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="tracks and behaviors for every frame of a video, with an overlay")
    run.add_argument("input", help="video file")
    run.add_argument("-o", "--output", help="overlay video to write (.mp4)")
    run.add_argument("--json", action="store_true", help="print the tracks as one JSON object on stdout")
    run.add_argument("--max-frames", type=int, help="stop after this many frames")
    _model_options(run)
    run.set_defaults(func=run_command)

    live = commands.add_parser("live", help="camera (or video file) with overlay and FPS")
    add_live_arguments(live)
    _model_options(live)
    live.set_defaults(func=live_command)

    ev = commands.add_parser("eval", help="HOTA, MOTA, IDF1 and behavior mAP on a ChimpACT-format folder")
    ev.add_argument("--data", required=True, help="folder with annotations.json (e.g. from `edgekit chimp synth`)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--baseline", nargs="?", const="", metavar="WEIGHTS",
                    help="also evaluate these weights (default: the shipped detector without temporal fusion)")
    _model_options(ev)
    ev.set_defaults(func=eval_command)

    syn = commands.add_parser("synth", help="render synthetic chimpanzee videos with exact ground truth")
    syn.add_argument("--out", required=True, help="folder to write (images/ + annotations.json)")
    syn.add_argument("--videos", type=int, default=8)
    syn.add_argument("--frames", type=int, default=64, help="frames per video")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--size", default="320x256", type=_size, help="WIDTHxHEIGHT")
    syn.set_defaults(func=synth_command)


def _model_options(parser: argparse.ArgumentParser) -> None:
    from edgekit.apps.runners import BACKENDS, CACHE_HELP

    parser.add_argument("--backend", default="eager", choices=BACKENDS,
                        help="eager runs the torch modules; the others compile them for this host once")
    parser.add_argument("--weights", help="weights .pt from `make train-chimp` "
                                          "(default: $EDGEKIT_WEIGHTS/chimp/chimp_fused.pt, else the shipped ones)")
    parser.add_argument("--artifacts", help=CACHE_HELP)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for eager: this model's small convs run fastest on one")


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    if not (w.isdigit() and h.isdigit() and int(w) >= 64 and int(h) >= 64):
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT of at least 64x64, e.g. 320x256")
    return int(w), int(h)


def _app_factory(args, weights: str | None):
    import torch

    from edgekit.apps.chimp.model import ChimpModel
    from edgekit.apps.chimp.runners import build_app

    torch.set_num_threads(args.threads)
    model = ChimpModel.load(weights)
    build_app(model, args.backend, args.artifacts)  # compile (once) before anything is timed
    return lambda: build_app(model, args.backend, args.artifacts)


def run_command(args) -> int:
    from edgekit.apps.chimp.app import draw

    source = Path(args.input)
    if not source.is_file():
        raise EdgekitError(f"{source} not found. Pass a video file.")
    if args.output and Path(args.output).suffix.lower() not in VIDEO_SUFFIXES:
        raise EdgekitError(f"-o {args.output}: write the overlay as .mp4.")
    app = _app_factory(args, args.weights)()
    frames, fps = open_video(str(source))
    writer = Sink(args.output, fps)
    records, elapsed = [], 0.0
    for index, frame in enumerate(limit(frames, args.max_frames)):
        start = time.perf_counter()
        tracks = app(frame)
        elapsed += time.perf_counter() - start
        records.append({"frame": index, "tracks": [t.as_json() for t in tracks]})
        writer.write(draw(frame, tracks))
    writer.close()
    if not records:
        raise EdgekitError(f"{source}: no frames could be read. Check that the file is a readable video.")
    if args.json:
        print(json.dumps({"frames": records}))
    ids = {t["track_id"] for r in records for t in r["tracks"]}
    print(f"chimp: {len(records)} frames, {len(ids)} tracks, {len(records) / elapsed:.1f} FPS ({args.backend})"
          + (f"; overlay: {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def live_command(args) -> int:
    from edgekit.apps.chimp.app import draw

    if args.headless and not args.output:
        raise EdgekitError("--headless needs -o out.mp4 for the overlay video.")
    with LiveSource.from_args(args, "chimp live") as video:  # opened before the model loads: fails fast
        app = _app_factory(args, args.weights)()
        last, rate = time.perf_counter(), 0.0
        with Sink(args.output, video.fps) as writer:
            for frame in video:
                overlay = draw(frame, app(frame))
                now = time.perf_counter()
                rate = 0.9 * rate + 0.1 / (now - last) if rate else 1 / (now - last)  # smoothed so it is readable
                last = now
                cv2.putText(overlay, f"{rate:.1f} FPS", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 0), 2)
                writer.write(overlay)
                if not args.headless and show(overlay, "edgekit chimp"):
                    break
    return 0


def eval_command(args) -> int:
    from edgekit.apps.chimp import data
    from edgekit.apps.chimp.eval import evaluate
    from edgekit.apps.chimp.model import SINGLE_WEIGHTS, default_weights

    dataset = data.load(args.data)
    results = {"model": evaluate(_app_factory(args, args.weights), dataset)}
    if args.baseline is not None:
        baseline = args.baseline or str(default_weights(SINGLE_WEIGHTS))
        results["baseline"] = evaluate(_app_factory(args, baseline), dataset)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, m in results.items():
            print(f"{name}: HOTA {m['HOTA']:.3f}  MOTA {m['MOTA']:.3f}  IDF1 {m['IDF1']:.3f}  "
                  f"behavior mAP {m['behavior_mAP']:.3f}  ({m['videos']} videos, {m['frames']} frames, "
                  f"{m['fps']:.1f} FPS {args.backend})")
    return 0


def synth_command(args) -> int:
    from edgekit.apps.chimp.synth import write_dataset

    if args.videos < 1 or args.frames < 2:
        raise EdgekitError("--videos must be at least 1 and --frames at least 2.")
    path = write_dataset(Path(args.out), args.videos, args.seed, args.frames, args.size)
    print(f"wrote {args.videos} videos of {args.frames} frames: {path}", file=sys.stderr)
    return 0
