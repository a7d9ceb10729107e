"""Size limits on the images, videos and audio the apps read, checked from the file's header before decoding.

A PNG of under 1 MB can declare 30000x30000 pixels: decoded, that is gigabytes. Every app reads its images through
`check_image` (header only, via PIL's lazy open) and its videos through `check_frame_size` (the capture's declared
frame size), so such a file is refused with the size and the option to raise the limit, not decoded. WAV length is
bounded the same way (`check_audio`, from the header: the samples are memory-mapped, not read).

The limits are per command line: `--max-pixels` / `--max-seconds` (see `add_media_arguments`); `configure(args)`
(called by edgekit's CLI for every command) sets them, defaults when a command has no such option, and passes the
command line's --quiet on to the apps' progress display (edgekit.apps.progress).
"""
from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError

DEFAULT_MAX_PIXELS = 40_000_000     # 40 megapixels per image or video frame (about 8K x 5K)
DEFAULT_MAX_SECONDS = 3600.0        # one hour of audio
_limits = {"pixels": DEFAULT_MAX_PIXELS, "seconds": DEFAULT_MAX_SECONDS}


def add_media_arguments(parser, image: bool = True, audio: bool = False) -> None:
    if image:
        parser.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS,
                            help="refuse images and video frames larger than this many pixels (width x height), "
                                 "read from the file header before decoding")
    if audio:
        parser.add_argument("--max-seconds", type=_positive_float, default=DEFAULT_MAX_SECONDS,
                            help="refuse audio files longer than this, read from the WAV header before decoding")


def configure(args) -> None:
    """The limits of this command line (the defaults where the command has no such option), and its --quiet."""
    from edgekit.apps import progress

    progress.configure(args)
    _limits["pixels"] = getattr(args, "max_pixels", None) or DEFAULT_MAX_PIXELS
    _limits["seconds"] = getattr(args, "max_seconds", None) or DEFAULT_MAX_SECONDS


def max_pixels() -> int:
    return int(_limits["pixels"])


def check_image(path: str | Path, limit: int | None = None) -> tuple[int, int]:
    """(width, height) from the image header; an EdgekitError when it is not an image or is over the limit.
    Nothing is decoded."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    limit = limit or max_pixels()
    if path.is_dir():
        raise EdgekitError(f"{path}: is a directory; pass an image file.")
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # PIL's own bomb guard off: the limit is ours, checked below
        with Image.open(path) as img:  # lazy: reads the header only
            width, height = img.size
    except FileNotFoundError:
        raise EdgekitError(f"{path}: image file not found.") from None
    except PermissionError:
        raise EdgekitError(f"{path}: permission denied; make the file readable (chmod a+r).") from None
    except Image.DecompressionBombError as exc:  # PIL's own (higher) guard, above twice its default limit
        raise EdgekitError(f"{path}: the image declares too many pixels ({exc}); the limit is {limit} pixels "
                           "(--max-pixels). Downscale it first.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:  # SyntaxError: PIL's bad-header error
        raise EdgekitError(f"{path}: not a readable image ({' '.join(str(exc).split())[:200]}). Pass a PNG, JPEG, "
                           "BMP, TIFF or WebP file.") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    check_frame_size(width, height, str(path), limit)
    return width, height


def check_frame_size(width: float, height: float, what: str, limit: int | None = None) -> None:
    limit = limit or max_pixels()
    pixels = int(width) * int(height)
    if pixels > limit:
        raise EdgekitError(f"{what}: {int(width)}x{int(height)} is {pixels} pixels, over the limit of {limit} "
                           f"(--max-pixels). Downscale it first, or raise --max-pixels if this machine has the "
                           "memory for it.")


def check_audio(path: str | Path, limit: float | None = None) -> None:
    """Refuse a WAV file whose header declares more than the limit's seconds (samples memory-mapped, not read).
    Files the header check cannot parse are left to the decoder, which reports them itself."""
    from scipy.io import wavfile

    limit = limit or float(_limits["seconds"])
    try:
        rate, data = wavfile.read(path, mmap=True)
    except Exception:  # noqa: BLE001 - scipy's parser fails on hostile headers with anything (see load_audio);
        return          # not refused here: load_audio's own parse of the file names the problem
    frames = data.shape[0] if getattr(data, "ndim", 0) else 0
    del data
    if rate > 0 and frames / rate > limit:
        raise EdgekitError(f"{path}: {frames / rate:.0f} s of audio, over the limit of {limit:.0f} s "
                           "(--max-seconds). Cut it into shorter files, or raise --max-seconds.")


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive whole number")
    return value


def _positive_float(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds")
    return value
