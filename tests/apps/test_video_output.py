"""What the apps write for a person to look at: H.264 videos a browser plays, and superres's side-by-side crop."""
import argparse
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from edgekit.apps.video import Sink, VideoWriter
from edgekit.bench import soak

SHARED = Path(__file__).resolve().parents[2] / "../shared"
CFSR_X2 = SHARED / "weights/cfsr/CFSR_x2.pth"
needs_cfsr = pytest.mark.skipif(not CFSR_X2.is_file(), reason="shared CFSR weights not found (../shared)")


def frames(count: int, width: int, height: int) -> list[np.ndarray]:
    """Moving gradients: every frame differs, so a codec that dropped or reordered frames would show."""
    y, x = np.mgrid[0:height, 0:width]
    return [np.dstack([(x * 255 // width + 20 * i) % 256, y * 255 // height, np.full_like(x, 40 * i % 256)])
            .astype(np.uint8) for i in range(count)]


def decode(path: Path) -> tuple[av.video.stream.VideoStream, list[np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = argparse.Namespace(codec=stream.codec_context.name, pix_fmt=stream.codec_context.pix_fmt,
                                  width=stream.codec_context.width, height=stream.codec_context.height,
                                  rate=float(stream.average_rate))
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return info, decoded


def test_sink_writes_browser_playable_h264_with_even_size(tmp_path):
    out = tmp_path / "overlay.mp4"
    written = frames(6, 101, 75)  # odd sizes: yuv420p needs even ones
    with Sink(str(out), fps=12.0) as sink:
        for frame in written:
            sink.write(frame)
        assert not out.exists()  # the name only ever holds a finished file
    info, decoded = decode(out)
    assert (info.codec, info.pix_fmt, info.width, info.height) == ("h264", "yuv420p", 100, 74)
    assert info.rate == pytest.approx(12.0) and len(decoded) == 6
    for got, want in zip(decoded, written):
        assert np.abs(got.astype(int) - want[:74, :100]).mean() < 6  # lossy, but the same pictures in order
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.mp4"]  # no partial file left behind
    assert out.read_bytes()[4:8] == b"ftyp"


def test_video_writer_refuses_an_unwritable_place(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(Exception, match="cannot write video"):
        VideoWriter(blocker / "out.mp4", 25.0, 64, 48)


def write_video(path, count: int, width: int, height: int, fps: float = 10.0):
    """`count` of `frames(...)` written with VideoWriter; returns the path."""
    writer = VideoWriter(path, fps, width, height)
    for frame in frames(count, width, height):
        writer.write(frame)
    writer.close()
    return path


def test_soak_input_copy_is_h264(tmp_path):
    source = write_video(tmp_path / "source.mp4", 4, 160, 120)
    out = soak._downscaled(source, tmp_path / "small.mp4", 2)
    info, decoded = decode(out)
    assert (info.codec, info.width, info.height, len(decoded)) == ("h264", 80, 60, 4)


@needs_cfsr
def test_superres_live_video_and_compare_crop(tmp_path):
    from edgekit.apps.superres import demo
    from edgekit.cli import main

    source = write_video(tmp_path / "in.mp4", 3, 64, 48)
    out = tmp_path / "live.mp4"
    assert main(["superres", "live", "--source", str(source), "--headless", "-o", str(out), "--scale", "2",
                 "--weights", str(CFSR_X2), "--max-frames", "3"]) == 0
    info, decoded = decode(out)
    assert (info.codec, info.width, info.height, len(decoded)) == ("h264", 128, 48, 3)  # bicubic | CFSR

    image = cv2.imread(str(SHARED / "data/pose/messi5.jpg"))[100:180, 150:270]
    cv2.imwrite(str(tmp_path / "small.png"), image)
    assert main(["superres", "run", str(tmp_path / "small.png"), "-o", str(tmp_path / "big.png"), "--scale", "2",
                 "--weights", str(CFSR_X2), "--compare"]) == 0
    side = cv2.imread(str(tmp_path / "big-compare.png"))
    crop = demo.COMPARE_CROP
    assert side.shape == (2 * crop, 4 * crop + 4, 3)  # two magnified crops and a gap
    left, right = side[:, :2 * crop].astype(int), side[:, 2 * crop + 4:].astype(int)
    assert np.abs(left - right)[40:].mean() > 1  # the model's side differs from bicubic below the labels
