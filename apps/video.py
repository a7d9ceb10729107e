"""Video plumbing shared by the apps' `run` and `live` commands: sources, overlay output, a preview window."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edgekit.errors import EdgekitError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def add_live_arguments(parser) -> None:
    """The options every `edgekit <app> live` takes."""
    parser.add_argument("--source", default="0", help="camera index, /dev/videoN, video file or stream URL")
    parser.add_argument("--headless", action="store_true", help="no window; write the overlay video to -o")
    parser.add_argument("-o", "--output", help="overlay video to write (.mp4); required with --headless")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")


def open_video(source: str | int) -> tuple[Iterator[np.ndarray], float]:
    """RGB frames of a camera (index or /dev/videoN), file or stream URL, and its frame rate (0 if unknown)."""
    if isinstance(source, str) and source.isdigit():
        source = int(source)
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise EdgekitError(f"cannot open video source {source!r}. Pass a video file, a stream URL or a camera "
                           "index (is a camera attached, and may this user read /dev/video*?).")

    def frames():
        try:
            while (frame := capture.read()[1]) is not None:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()
    return frames(), capture.get(cv2.CAP_PROP_FPS)


def limit(frames: Iterator[np.ndarray], count: int | None) -> Iterator[np.ndarray]:
    for index, frame in enumerate(frames):
        if count is not None and index >= count:
            return
        yield frame


def show(frame_rgb: np.ndarray, title: str) -> bool:
    """Display one frame; True when the user pressed q or Esc."""
    try:
        cv2.imshow(title, cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        return cv2.waitKey(1) & 0xFF in (ord("q"), 27)
    except cv2.error:
        raise EdgekitError("this OpenCV build cannot open a window (no display?). Use --headless -o out.mp4.") \
            from None


class Sink:
    """Overlay output: one image (by suffix) or a video opened at the first frame's size; nothing without a path."""

    def __init__(self, path: str | None, fps: float, default_fps: float = 25.0):
        self.path, self.fps, self.video = path, fps or default_fps, None

    def write(self, frame_rgb: np.ndarray) -> None:
        if self.path is None:
            return
        bgr = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if Path(self.path).suffix.lower() in IMAGE_SUFFIXES:
            if not cv2.imwrite(self.path, bgr):
                raise EdgekitError(f"cannot write {self.path}.")
            return
        if self.video is None:
            self.video = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                         (bgr.shape[1], bgr.shape[0]))
            if not self.video.isOpened():
                raise EdgekitError(f"cannot write video {self.path}; use an .mp4 name in a writable folder.")
        self.video.write(bgr)

    def close(self) -> None:
        if self.video is not None:
            self.video.release()
