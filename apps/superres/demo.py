"""`edgekit superres {eval,run,live}`: the command line over model, eval and app."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edgekit import paths
from edgekit.apps.media import add_media_arguments, check_image
from edgekit.apps.progress import JsonLines, say
from edgekit.apps.video import LiveSource, Sink, add_live_arguments, show, use_window
from edgekit.errors import EdgekitError

from .app import (BACKENDS, CACHE_HELP, MAX_TILE, MIN_SIZE, build_sr, check_tiling, tiling_for, upscale_image,
                  upscale_rgb)
from .eval import evaluate
from .model import SCALES, check_scale

FORMATTER = argparse.ArgumentDefaultsHelpFormatter
WINDOW = "edgekit superres (q to quit)"
COMPARE_DEFAULT = Path("-")  # --compare without a name: beside the output
COMPARE_CROP = 160  # output pixels per side of the --compare crop, shown at twice that size
# run/live --tile: the largest LR piece per model call; 640 runs a VGA frame (640x480) or smaller in one call, and
# compiled backends build one artifact for every LR side in 16..640
TILE = 640


def register(subparsers) -> None:
    parser = subparsers.add_parser("superres", help="CFSR super-resolution: evaluate, upscale files, live video",
                                   formatter_class=FORMATTER)
    commands = parser.add_subparsers(dest="superres_command", required=True)

    ev = commands.add_parser("eval", help="PSNR-Y/SSIM-Y on an HR image folder (SR-literature protocol)",
                             formatter_class=FORMATTER)
    # 56: every Set5/Set14 LR image at x2-x4 is at least this big, so no image is padded to an int8 artifact's
    # tile, and the int8 recipe calibrates on 56x56 LR tiles
    _model_args(ev, tile=56, overlap=12, int8=True)
    ev.add_argument("--data", default=_default_data("Set5"), help="folder of HR images; None: $EDGEKIT_DATA/sr/Set5")
    ev.add_argument("--quantize", choices=["int8"], help="evaluate a quantized compiled artifact")
    ev.add_argument("--calibration", default=_default_data("Set14"),
                    help="HR images whose LR tiles calibrate int8; None: $EDGEKIT_DATA/sr/Set14")
    ev.add_argument("--json", action="store_true",
                    help="print JSON lines as images are scored: one object per image, then the summary")
    add_media_arguments(ev)
    ev.set_defaults(func=_eval)

    run = commands.add_parser("run", help="upscale one image file", formatter_class=FORMATTER)
    run.add_argument("input", type=Path, help="image to upscale (RGB, gray, RGBA; 8 or 16 bit)")
    run.add_argument("-o", "--output", type=Path, required=True, help="where to write the result")
    run.add_argument("--compare", type=Path, nargs="?", const=COMPARE_DEFAULT, metavar="IMAGE",
                     help="also write a side-by-side crop, bicubic | CFSR, of the region the model changes most "
                          "(without IMAGE: OUTPUT's name with -compare.png)")
    _model_args(run, tile=TILE, overlap=16)
    add_media_arguments(run)
    run.set_defaults(func=_run)

    live = commands.add_parser("live", help="side-by-side bicubic vs CFSR on a camera, file or stream",
                               formatter_class=FORMATTER)
    add_live_arguments(live)
    _model_args(live, tile=TILE, overlap=16)
    live.set_defaults(func=_live)


def _model_args(parser: argparse.ArgumentParser, tile: int, overlap: int, int8: bool = False) -> None:
    parser.add_argument("--scale", type=int, default=4, choices=SCALES, help="upscaling factor")
    parser.add_argument("--weights", help="CFSR_x{S}.pth checkpoint; None: $EDGEKIT_WEIGHTS/cfsr/CFSR_x{S}.pth")
    parser.add_argument("--backend", default="eager", choices=BACKENDS, help="eager is the PyTorch reference")
    parser.add_argument("--target", default="host", help="compile target for compiled backends")
    parser.add_argument("--tile", type=int, default=tile,
                        help="largest LR piece run in one model call: an image with both sides <= TILE runs whole, a "
                             "larger one in overlapping TILE x TILE tiles. A compiled backend builds one artifact for "
                             f"every LR side in {MIN_SIZE}..TILE (TILE at most {MAX_TILE}; smaller images are mirrored "
                             f"up to {MIN_SIZE})" + ("; a --quantize int8 artifact takes exactly TILE x TILE and "
                                                     "calibrates on TILE x TILE LR tiles" if int8 else ""))
    parser.add_argument("--overlap", type=int, default=overlap, help="LR context pixels around each tile")
    parser.add_argument("--cache", type=Path, help=CACHE_HELP)


def _default_data(name: str) -> str | None:
    """$EDGEKIT_DATA/sr/NAME (edgekit.paths) when that folder exists; None makes the command ask for the flag."""
    folder = paths.data("sr", name)
    return str(folder) if folder.is_dir() else None


def _sr_from_args(args: argparse.Namespace, quantize: str | None = None, calibration: str | None = None):
    check_scale(args.scale)
    check_tiling(args.tile, args.overlap, args.backend)
    sr = build_sr(args.backend, args.scale, args.weights, args.tile, args.target, quantize, calibration, args.cache)
    return sr, tiling_for(args.backend, args.tile, args.overlap, quantize)


def _eval(args: argparse.Namespace) -> int:
    if not args.data:
        raise EdgekitError("No evaluation data given. Pass --data DIR or set EDGEKIT_DATA.")
    sr, tiling = _sr_from_args(args, args.quantize, args.calibration)
    if args.backend == "eager":
        tiling = {}  # the reference runs whole images, as in the paper
    lines = JsonLines(args.json)
    scores = evaluate(lambda lr: upscale_rgb(lr, sr, args.scale, **tiling), args.data, args.scale,
                      on_score=lambda score: lines.item("image", vars(score)))
    report = {
        "model": f"cfsr_x{args.scale}", "dataset": Path(args.data).name, "scale": args.scale,
        "backend": args.backend, "target": args.target, "precision": args.quantize or "fp32",
        "tile": tiling.get("tile"), "n_images": len(scores),
        "psnr_y": float(np.mean([s.psnr_y for s in scores])),
        "ssim_y": float(np.mean([s.ssim_y for s in scores])),
        "bicubic_psnr_y": float(np.mean([s.bicubic_psnr_y for s in scores])),
        "images": [vars(s) for s in scores],
    }
    lines.summary(report)
    if not args.json:
        print(f"{report['model']} {report['backend']} {report['precision']} on {report['dataset']} "
              f"({report['n_images']} images): PSNR-Y {report['psnr_y']:.2f} dB, SSIM-Y {report['ssim_y']:.4f} "
              f"(bicubic {report['bicubic_psnr_y']:.2f} dB)")
    return 0


def upscale_file(src, dst, scale: int = 4, backend: str = "eager", weights=None, tile: int = TILE,
                 overlap: int = 16, target: str = "host", cache=None, compare=None) -> Path:
    """Read `src`, super-resolve it, write `dst` (format from its suffix) and, with `compare`, the side-by-side crop
    there; the `run` command and `make demo`."""
    args = argparse.Namespace(scale=scale, backend=backend, weights=weights, tile=tile, overlap=overlap,
                              target=target, cache=cache)
    check_image(src)  # its header's size, before decoding: a small file can declare gigapixels
    img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype not in (np.uint8, np.uint16):
        raise EdgekitError(f"Cannot read {src} as an 8- or 16-bit image. Pass a PNG, JPEG, BMP or TIFF file.")
    sr, tiling = _sr_from_args(args)
    rgb = _to_rgb(img)
    out = upscale_image(rgb, sr, scale, **tiling)
    _write_image(dst, _from_rgb(out))
    if compare is not None:
        _write_image(compare, _from_rgb(compare_crop(rgb, out, scale)))
    return Path(dst)


def _write_image(dst, img: np.ndarray) -> None:
    try:
        written = cv2.imwrite(str(dst), img)
    except cv2.error as exc:
        raise EdgekitError(f"Cannot write {dst}: {exc.err}. Use a .png, .jpg, .bmp or .tiff output name.") from exc
    if not written:
        raise EdgekitError(f"Cannot write {dst}. Check the folder exists and the suffix is an image format.")


def compare_crop(image: np.ndarray, upscaled: np.ndarray, scale: int, size: int = COMPARE_CROP) -> np.ndarray:
    """8-bit RGB, bicubic | model, of the `size` x `size` output region where the model departs most from bicubic
    (edges and texture: where a person looks), each side magnified twice with visible pixels and labelled."""
    lr, sr = _rgb8(image), _rgb8(upscaled)
    h, w = sr.shape[:2]
    bicubic = cv2.resize(lr, (w, h), interpolation=cv2.INTER_CUBIC)
    size = min(size, h, w)
    change = cv2.blur(np.abs(sr.astype(np.float32) - bicubic).sum(axis=2), (size, size))
    half = size // 2
    valid = change[half:h - size + half + 1, half:w - size + half + 1]  # centres of crops inside the image
    y, x = np.unravel_index(int(np.argmax(valid)), valid.shape)
    sides = []
    for img, label in ((bicubic, "bicubic"), (sr, f"CFSR x{scale}")):
        side = cv2.resize(img[y:y + size, x:x + size], (2 * size, 2 * size), interpolation=cv2.INTER_NEAREST)
        cv2.putText(side, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 4)
        cv2.putText(side, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        sides.append(side)
    gap = np.full((2 * size, 4, 3), 255, np.uint8)
    return np.hstack([sides[0], gap, sides[1]])


def _rgb8(img: np.ndarray) -> np.ndarray:
    """Gray, RGB or RGBA, 8 or 16 bit -> 8-bit RGB (alpha dropped)."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(img[..., :3])


def _run(args: argparse.Namespace) -> int:
    compare = args.output.with_name(f"{args.output.stem}-compare.png") if args.compare == COMPARE_DEFAULT \
        else args.compare
    start = time.perf_counter()
    upscale_file(args.input, args.output, args.scale, args.backend, args.weights, args.tile, args.overlap,
                 args.target, args.cache, compare)
    say(f"superres: wrote {args.output} (x{args.scale}, {args.backend}, {time.perf_counter() - start:.1f} s)"
        + (f"; bicubic | CFSR crop: {compare}" if compare else ""))
    return 0


def _to_rgb(img: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) order to RGB(A); gray stays as is."""
    if img.ndim == 2:
        return img
    return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def _from_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    return cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR)


def _side_by_side(frame: np.ndarray, sr, scale: int, tiling: dict, fps: float) -> np.ndarray:
    """Downscale the RGB frame by `scale`, then show bicubic (left) and CFSR (right) back at frame size."""
    h, w = frame.shape[0] - frame.shape[0] % scale, frame.shape[1] - frame.shape[1] % scale
    lr = cv2.resize(frame[:h, :w], (w // scale, h // scale), interpolation=cv2.INTER_AREA)
    bicubic = cv2.resize(lr, (w, h), interpolation=cv2.INTER_CUBIC)
    restored = upscale_rgb(lr, sr, scale, **tiling)
    for img, label in ((bicubic, "bicubic"), (restored, f"CFSR x{scale}  {fps:.1f} fps")):
        cv2.putText(img, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 0), 2)
    return np.hstack([bicubic, restored])


def _live(args: argparse.Namespace) -> int:
    if args.headless and not args.output:
        raise EdgekitError("--headless needs -o OUT.mp4 to write the side-by-side video.")
    window = use_window(args, "superres")  # decided before any GUI call: without a display it runs headless
    with LiveSource.from_args(args, "superres live") as video:  # opened before the model loads: fails fast
        sr, tiling = _sr_from_args(args)
        fps = 0.0
        with Sink(args.output, video.fps) as sink:
            try:
                for frame in video.tracked():
                    start = time.perf_counter()
                    view = _side_by_side(frame, sr, args.scale, tiling, fps)
                    fps = 1.0 / (time.perf_counter() - start)
                    sink.write(view)
                    if window and show(view, WINDOW):
                        break
            finally:
                if window:
                    cv2.destroyAllWindows()
    if video.processed == 0:
        raise EdgekitError(f"Video source {args.source!r} opened but gave no frames.")
    if args.output:
        print(f"superres live: side-by-side video: {args.output}", file=sys.stderr)
    return 0
