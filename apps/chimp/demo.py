"""`edgekit chimp run|live|eval|synth`: chimpanzee tracking and behavior recognition on videos and cameras."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from edgekit.apps.progress import JsonLines
from edgekit.apps.video import Sink, add_run_and_live, frame_count, live_overlay, open_video, run_frames
from edgekit.errors import EdgekitError

VIDEO_SUFFIXES = {".mp4", ".avi"}


def register(subparsers) -> None:
    chimp = subparsers.add_parser("chimp", help="chimpanzee tracking and behavior recognition")
    commands = chimp.add_subparsers(dest="chimp_command", metavar="COMMAND", required=True)

    add_run_and_live(commands, _model_options, run_command, live_command,
                     run_help="tracks and behaviors for every frame of a video, with an overlay",
                     input_help="video file", output_help="overlay video to write (.mp4)",
                     json_help="print JSON lines on stdout as frames are done: one object per frame (tracks), "
                               "then a summary object")

    ev = commands.add_parser("eval", help="HOTA, MOTA, IDF1 and behavior mAP on a ChimpACT-format folder")
    ev.add_argument("--data", required=True, help="folder with annotations.json (e.g. from `edgekit chimp synth`)")
    ev.add_argument("--json", action="store_true", help="print JSON lines: one object per video as it is done, "
                                                       "then the metrics of each model in a summary object")
    ev.add_argument("--baseline", nargs="?", const="", metavar="WEIGHTS",
                    help="also evaluate these weights (default: the shipped detector without temporal fusion)")
    _model_options(ev)
    ev.set_defaults(func=eval_command)

    syn = commands.add_parser("synth", help="render synthetic chimpanzee videos with exact ground truth")
    syn.add_argument("--out", required=True, help="folder to write (images/ + annotations.json)")
    syn.add_argument("--videos", type=int, default=8, help="how many synthetic videos to render")
    syn.add_argument("--frames", type=int, default=64, help="frames per video")
    syn.add_argument("--seed", type=int, default=0, help="random seed of the scenes (same seed, same videos)")
    syn.add_argument("--size", default="320x256", type=_size, help="WIDTHxHEIGHT")
    syn.set_defaults(func=synth_command)


def _model_options(parser: argparse.ArgumentParser) -> None:
    from edgekit.apps.runners import add_backend_arguments

    add_backend_arguments(parser, "eager runs the torch modules; the others compile them for this host once",
                          "weights .pt from `make train-chimp` (default: $EDGEKIT_WEIGHTS/chimp/chimp_fused.pt, "
                          "else the shipped ones)")
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

    def step(index, frame):
        tracks = app(frame)
        return {"frame": index, "tracks": [t.as_json() for t in tracks]}, draw(frame, tracks)

    lines = JsonLines(args.json)
    records, elapsed = run_frames(frames, args.max_frames, step, Sink(args.output, fps), name="chimp run",
                                  total=frame_count(str(source)), json_lines=lines)
    if not records:
        raise EdgekitError(f"{source}: no frames could be read. Check that the file is a readable video.")
    ids = {t["track_id"] for r in records for t in r["tracks"]}
    fps = len(records) / elapsed
    lines.summary({"frames": len(records), "tracks": len(ids), "fps": round(fps, 3), "backend": args.backend,
                   "output": args.output})
    print(f"chimp: {len(records)} frames, {len(ids)} tracks, {fps:.1f} FPS ({args.backend})"
          + (f"; overlay: {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def live_command(args) -> int:
    from edgekit.apps.chimp.app import draw

    return live_overlay(args, "chimp", lambda: _app_factory(args, args.weights)(), draw)


def eval_command(args) -> int:
    from edgekit.apps.chimp import data
    from edgekit.apps.chimp.eval import evaluate
    from edgekit.apps.chimp.model import SINGLE_WEIGHTS, default_weights

    dataset = data.load(args.data)
    lines = JsonLines(args.json)
    models = {"model": args.weights}
    if args.baseline is not None:
        models["baseline"] = args.baseline or str(default_weights(SINGLE_WEIGHTS))
    results = {name: evaluate(_app_factory(args, weights), dataset,
                              on_video=lambda figures, name=name: lines.item("video", {"model": name, **figures}))
               for name, weights in models.items()}
    lines.summary(results)
    if not args.json:
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
