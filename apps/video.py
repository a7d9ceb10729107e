"""Video plumbing shared by the apps' `run` and `live` commands: sources, H.264 overlay output, a preview window where
there is a display (headless otherwise)."""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from edgekit.apps.livestats import StatsLog, add_run_arguments
from edgekit.apps.media import add_media_arguments, check_frame_size
from edgekit.apps.progress import track
from edgekit.errors import EdgekitError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def add_live_arguments(parser) -> None:
    """The options every `edgekit <app> live` takes."""
    parser.add_argument("--source", default="0", help="camera index, /dev/videoN, video file or stream URL")
    parser.add_argument("--headless", action="store_true",
                        help="no window; write the overlay video to -o (without a display, live runs headless anyway)")
    parser.add_argument("-o", "--output", help="overlay video to write (H.264 .mp4); required with --headless")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    parser.add_argument("--realtime", action="store_true",
                        help="play a file source at its frame rate, as a camera would: frames that arrive while "
                             "the app is busy are dropped and counted (cameras and streams always are)")
    add_run_arguments(parser, "video")
    add_media_arguments(parser)


def open_video(source: str | int) -> tuple[Iterator[np.ndarray], float]:
    """RGB frames of a camera (index or /dev/videoN), file or stream URL, and its frame rate (0 if unknown)."""
    capture = open_capture(_parse_source(source))

    def frames():
        try:
            while (frame := capture.read()[1]) is not None:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()
    return frames(), capture.get(cv2.CAP_PROP_FPS)


def frame_count(path: str) -> int | None:
    """The frame count a video file's header states (None when it states none): the length of a progress bar."""
    capture = cv2.VideoCapture(path)
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    return count if count > 0 else None


def _parse_source(source: str | int) -> str | int:
    return int(source) if isinstance(source, str) and source.isdigit() else source


def source_kind(source: str | int) -> str:
    """"camera" (index or /dev/...), "stream" (URL) or "file"."""
    if isinstance(source, int) or str(source).startswith("/dev/"):
        return "camera"
    return "stream" if "://" in str(source) else "file"


def open_capture(source: str | int) -> cv2.VideoCapture:
    """An opened capture, or an EdgekitError saying whether the camera or file is missing or not readable."""
    kind = source_kind(source)
    path = Path(f"/dev/video{source}" if isinstance(source, int) else str(source))
    problem = _access_problem(path) if kind == "file" or (kind == "camera" and sys.platform.startswith("linux")) \
        else None
    if problem == "missing":
        what = f"no camera at {path}" if kind == "camera" else "no such file"
        raise EdgekitError(f"cannot open video source {source!r}: {what}. Connect a camera, or pass a video file "
                           "or stream URL with --source.")
    if problem == "denied":
        fix = ("add this user to the 'video' group (sudo usermod -aG video $USER, then log in again)"
               if kind == "camera" else "make the file readable (chmod a+r) or copy it somewhere this user can read")
        raise EdgekitError(f"cannot open video source {source!r}: permission denied on {path}; {fix}.")
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise EdgekitError(f"cannot open video source {source!r}. Pass a video file, a stream URL or a camera "
                           "index (is a camera attached, and may this user read /dev/video*?).")
    try:  # the declared frame size, before any frame is decoded
        check_frame_size(capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT),
                         f"video source {source!r}")
    except EdgekitError:
        capture.release()
        raise
    return capture


def _access_problem(path: Path) -> str | None:
    """"missing", "denied" (the file or a folder on its way) or None."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except PermissionError:
        return "denied"
    return None if os.access(path, os.R_OK) else "denied"


def limit(frames: Iterator[np.ndarray], count: int | None) -> Iterator[np.ndarray]:
    for index, frame in enumerate(frames):
        if count is not None and index >= count:
            return
        yield frame


class LiveSource:
    """The frames of a live command, with the counts a soak run needs.

    A camera or stream is read by a thread that keeps only the newest frame: the ones the app had no time for are
    dropped and counted, and the app always gets the freshest. A file gives every frame in turn, or with
    `realtime` is paced at its frame rate and read like a camera. `loop` reopens a file when it ends;
    `max_frames` and `duration` (seconds, 0: none) stop the run. A camera that stops delivering frames
    (unplugged) raises an EdgekitError; a file that ends before its header's frame count gets a warning."""

    def __init__(self, source: str | int, *, loop: bool = False, realtime: bool = False,
                 max_frames: int | None = None, duration: float = 0.0, stats: str | None = None,
                 name: str = "live"):
        self.source = _parse_source(source)
        self.kind = source_kind(self.source)
        if (loop or realtime) and self.kind != "file":
            flag = "--loop" if loop else "--realtime"
            raise EdgekitError(f"{flag} applies to a video file; {source!r} is a {self.kind}, which is live "
                               "already. Drop the flag or pass a file.")
        self.loop, self.realtime, self.max_frames, self.duration = loop, realtime, max_frames, duration
        self.stats_path, self.name = stats, name
        self.capture = open_capture(self.source)
        self.fps = self.capture.get(cv2.CAP_PROP_FPS)
        if realtime and not self.fps > 0:
            self.capture.release()
            raise EdgekitError(f"--realtime plays {source} at its frame rate, but the file does not state one. "
                               "Drop --realtime, or re-encode it with a frame rate (ffmpeg -r 25).")
        self.frame_count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)) if self.kind == "file" else 0
        self.processed = self.dropped = self._pass_frames = 0
        self.passes = 1
        self.end, self.elapsed, self._reader, self._frames = None, 0.0, None, None

    @classmethod
    def from_args(cls, args, name: str) -> "LiveSource":
        return cls(args.source, loop=args.loop, realtime=args.realtime, max_frames=args.max_frames,
                   duration=args.duration, stats=args.stats, name=name)

    def tracked(self) -> Iterator[np.ndarray]:
        """The frames with a progress bar (see edgekit.apps.progress): out of --max-frames or a file's frame
        count, a rate and elapsed time only for a camera, a stream or a looped file."""
        total = self.frame_count if self.kind == "file" and not self.loop else None
        if self.max_frames is not None:
            total = min(total, self.max_frames) if total else self.max_frames
        return track(self, self.name, total=total, unit="frames")

    def counts(self) -> dict:
        dropped = self._reader.dropped if self._reader else 0
        return {"unit": "frames", "processed": self.processed, "dropped": dropped, "passes": self.passes}

    def __iter__(self) -> Iterator[np.ndarray]:
        self._frames = self._generate()
        return self._frames

    def __enter__(self) -> "LiveSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading (the summary is printed once the frames were iterated) and release the source."""
        if self._frames is not None:
            self._frames.close()
        self.capture.release()

    def _generate(self) -> Iterator[np.ndarray]:
        paced = self.kind == "file" and self.realtime
        if self.kind != "file" or paced:
            self._reader = _NewestFrame(self._read, self.fps if paced else 0.0)
        stats = StatsLog(self.stats_path, self.counts)
        start = time.perf_counter()
        try:
            while True:
                if self.max_frames is not None and self.processed >= self.max_frames:
                    self.end = "max frames"
                    return
                if self.duration and time.perf_counter() - start >= self.duration:
                    self.end = "duration"
                    return
                frame = self._reader.get() if self._reader else self._read()
                if frame is None:
                    self.end = "source ended"
                    break
                self.processed += 1
                yield frame
        finally:
            self.elapsed = time.perf_counter() - start
            if self._reader:
                self._reader.stop()
                self.dropped = self._reader.dropped
            self.capture.release()
            stats.close(end=self.end or "stopped")
            print(self.summary(), file=sys.stderr)
        if self.kind == "camera":
            raise EdgekitError(f"camera {self.source!r} stopped delivering frames after {self.processed} frames: "
                               "was it unplugged, or taken by another program? The output written so far is "
                               "complete.")
        if self.kind == "stream":
            print(f"{self.name}: stream {self.source!r} ended after {self.processed} frames.", file=sys.stderr)

    def _read(self) -> np.ndarray | None:
        """The next RGB frame (reopening a file at its end with `loop`), None at the end."""
        ok, frame = self.capture.read()
        if not ok and self.kind == "file":
            self._check_complete()
            if self.loop and self._pass_frames:
                self.capture.release()
                self.capture = open_capture(self.source)
                self.passes, self._pass_frames = self.passes + 1, 0
                ok, frame = self.capture.read()
        if not ok:
            return None
        self._pass_frames += 1
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def _check_complete(self) -> None:
        if self.frame_count and self._pass_frames < self.frame_count - 1:  # containers may count one extra
            print(f"{self.name}: warning: {self.source} ended after {self._pass_frames} of its "
                  f"{self.frame_count} frames (truncated or damaged file?)", file=sys.stderr)

    def summary(self) -> str:
        total = self.processed + self.dropped
        share = f" ({100 * self.dropped / total:.1f}%)" if total else ""
        return (f"{self.name}: {self.processed} frames processed, {self.dropped} dropped{share} in "
                f"{self.elapsed:.1f} s ({self.end or 'stopped'})")


class _NewestFrame:
    """A thread calling `read()` (None at the end) and keeping only the newest frame; `fps` > 0 paces it."""

    def __init__(self, read, fps: float):
        self._read, self._fps = read, fps
        self._cond = threading.Condition()
        self._frame, self._ended, self._error, self._stopping = None, False, None, False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start, index = time.perf_counter(), 0
        try:
            while not self._stopping:
                frame = self._read()
                if frame is None:
                    break
                if self._fps:
                    time.sleep(max(0.0, start + index / self._fps - time.perf_counter()))
                    index += 1
                with self._cond:
                    if self._frame is not None:
                        self.dropped += 1
                    self._frame = frame
                    self._cond.notify()
        except EdgekitError as exc:
            self._error = exc
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify()

    def get(self) -> np.ndarray | None:
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._ended)
            frame, self._frame = self._frame, None
        if frame is None and self._error:
            raise self._error
        return frame

    def stop(self) -> None:
        self._stopping = True
        self._thread.join()


def display_problem() -> str | None:
    """Why no window can be opened here, None when one can. On Linux and the BSDs an X11 or Wayland display must be
    named and, when local, have its socket (without one, OpenCV's Qt backend aborts the process on the first
    window); elsewhere there always is a desktop."""
    if not sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return None
    wayland, x11 = os.environ.get("WAYLAND_DISPLAY"), os.environ.get("DISPLAY")
    if wayland:
        runtime = Path(os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}"))
        if (runtime / wayland).exists():
            return None
    if x11:
        number = x11[1:].split(".")[0] if x11.startswith(":") else None
        if number is None or Path(f"/tmp/.X11-unix/X{number}").exists():  # a remote display is taken on trust
            return None
        return f"DISPLAY={x11} has no X server"
    if wayland:
        return f"WAYLAND_DISPLAY={wayland} has no socket"
    return "DISPLAY and WAYLAND_DISPLAY are unset"


def use_window(args, name: str) -> bool:
    """Whether this live run shows a window. Decided before any GUI call: without --headless and without a display
    it runs headless, saying so in one line."""
    if args.headless:
        return False
    problem = display_problem()
    if problem is None:
        return True
    keep = f"writing the overlay to {args.output}" if args.output else "pass -o out.mp4 to keep the overlay video"
    print(f"{name} live: no display ({problem}), running headless; {keep}.", file=sys.stderr)
    return False


def show(frame_rgb: np.ndarray, title: str) -> bool:
    """Display one frame; True when the user pressed q or Esc."""
    try:
        cv2.imshow(title, cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        return cv2.waitKey(1) & 0xFF in (ord("q"), 27)
    except cv2.error:
        raise EdgekitError("this OpenCV build cannot open a window. Use --headless -o out.mp4.") from None


class Sink:
    """Overlay output: one image (by suffix) or an H.264 video (yuv420p, even size: browsers play it) opened at the
    first frame's size; nothing without a path. The video is written to a temporary name and renamed on close, so
    the path only ever holds a complete, playable file."""

    def __init__(self, path: str | None, fps: float, default_fps: float = 25.0):
        self.path, self.fps, self.video = path, fps or default_fps, None

    def write(self, frame_rgb: np.ndarray) -> None:
        if self.path is None:
            return
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgekitError(f"cannot create the folder of {self.path}: {exc.strerror}. Pick a writable "
                               "place for -o.") from None
        if Path(self.path).suffix.lower() in IMAGE_SUFFIXES:
            if not cv2.imwrite(self.path, cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)):
                raise EdgekitError(f"cannot write {self.path}.")
            return
        if self.video is None:
            self.video = VideoWriter(self.path, self.fps, frame_rgb.shape[1], frame_rgb.shape[0])
        self.video.write(frame_rgb)

    def close(self) -> None:
        if self.video is not None:
            self.video.close()
            self.video = None

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """RGB frames to an H.264 (libx264, yuv420p) video through PyAV: the container from the suffix (.mp4, .mkv,
    .avi), odd sizes cropped by one pixel to the even size yuv420p needs. Written to PATH.partial and renamed by
    `close()`."""

    def __init__(self, path: str | Path, fps: float, width: int, height: int):
        import av

        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.width, self.height = width - width % 2, height - height % 2
        if self.width < 2 or self.height < 2:
            raise EdgekitError(f"cannot write video {self.path}: frames of {width}x{height} are too small.")
        try:
            self.partial.touch()  # the muxer opens the file only at its first packet: fail here, before any work
            mp4 = self.path.suffix.lower() in (".mp4", ".m4v", ".mov")  # the index first: plays while loading
            self.container = av.open(str(self.partial), "w", options={"movflags": "+faststart"} if mp4 else {})
        except (OSError, ValueError) as exc:
            if self.partial.parent.is_dir():
                self.partial.unlink(missing_ok=True)
            raise EdgekitError(f"cannot write video {self.path} ({getattr(exc, 'strerror', None) or exc}). Use an "
                               ".mp4 name in a writable folder.") from None
        self.stream = self.container.add_stream("libx264", rate=Fraction(round(fps * 1000), 1000))
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        self.stream.options = {"preset": "veryfast", "crf": "23"}

    def write(self, frame_rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb[:self.height, :self.width]),
                                           format="rgb24")
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder, finish the file and move it to its name."""
        try:
            self.container.mux(self.stream.encode())
        finally:
            self.container.close()
        os.replace(self.partial, self.path)


def live_overlay(args, name: str, build_app, draw, default_fps: float = 25.0) -> int:
    """The live loop of the video apps: the source opens first (a bad camera or file fails before any model loads),
    then `build_app()`; each frame is drawn with `draw(frame, app(frame))` and a smoothed FPS, written to -o and shown
    in a window when there is a display and no --headless (q or Esc stops)."""
    if args.headless and not args.output:
        raise EdgekitError("--headless needs -o out.mp4 for the overlay video.")
    window = use_window(args, name)
    with LiveSource.from_args(args, f"{name} live") as video:
        app = build_app()
        last, rate = time.perf_counter(), 0.0
        with Sink(args.output, video.fps, default_fps=default_fps) as writer:
            for frame in video.tracked():
                overlay = draw(frame, app(frame))
                now = time.perf_counter()
                rate = 0.9 * rate + 0.1 / (now - last) if rate else 1 / (now - last)  # smoothed to be readable
                last = now
                cv2.putText(overlay, f"{rate:.1f} FPS", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 0), 2)
                writer.write(overlay)
                if window and show(overlay, f"edgekit {name}"):
                    break
    if args.output and video.processed:
        print(f"{name} live: overlay video: {args.output}", file=sys.stderr)
    return 0


def add_run_and_live(commands, options, run, live, *, run_help: str, input_help: str, output_help: str,
                     json_help: str, frames_help: str = "stop after this many frames"):
    """The `run FILE` and `live` subcommands of a video app; `options(parser)` adds the app's model options to both.
    Returns the run parser, for run-only options."""
    run_parser = commands.add_parser("run", help=run_help)
    run_parser.add_argument("input", help=input_help)
    run_parser.add_argument("-o", "--output", help=output_help)
    run_parser.add_argument("--json", action="store_true", help=json_help)
    run_parser.add_argument("--max-frames", type=int, help=frames_help)
    add_media_arguments(run_parser)
    options(run_parser)
    run_parser.set_defaults(func=run)
    live_parser = commands.add_parser("live", help="camera (or video file) with overlay and FPS")
    add_live_arguments(live_parser)
    options(live_parser)
    live_parser.set_defaults(func=live)
    return run_parser


def run_frames(frames: Iterator[np.ndarray], count: int | None, step, sink: "Sink", *, name: str = "run",
               total: int | None = None, json_lines=None) -> tuple[list, float]:
    """(records, seconds spent in step) over the first `count` frames: step(index, frame) -> (record, overlay),
    overlays written to `sink` (closed at the end), a progress bar over `total` frames (the video's count, if known)
    and each record printed to `json_lines` (a JsonLines) as it comes."""
    records, elapsed = [], 0.0
    if count is not None:
        total = min(count, total) if total else count
    with sink:
        for index, frame in enumerate(track(limit(frames, count), name, total=total, unit="frames")):
            start = time.perf_counter()
            record, overlay = step(index, frame)
            elapsed += time.perf_counter() - start
            records.append(record)
            if json_lines is not None:
                json_lines.item("frame", record)
            sink.write(overlay)
    return records, elapsed
