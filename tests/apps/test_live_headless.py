"""`edgekit <app> live` as a newcomer runs it on a server: no display, no camera, no microphone.

Every command runs in a subprocess without DISPLAY / WAYLAND_DISPLAY: a GUI call there aborts the process with a
signal (Qt's abort), which only a subprocess shows. Each must end with exit 0 (headless, saying so in one line) or
exit 2 with a message naming the fix, never by a signal and never with a traceback."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.apps import video
from edgekit.apps.video import VideoWriter

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / "../shared"
WEIGHTS = {"pose": ["--weights", str(SHARED / "weights/mediapipe")],
           "superres": ["--weights", str(SHARED / "weights/cfsr/CFSR_x2.pth"), "--scale", "2"],
           "chimp": []}  # chimp: the weights shipped in the repo
VIDEO_APPS = list(WEIGHTS)
NO_CAMERA = not Path("/dev/video0").exists()
pytestmark = pytest.mark.skipif(not (SHARED / "weights/cfsr").is_dir() or not (SHARED / "weights/mediapipe").is_dir(),
                                reason="shared weights not found next to the repo (../shared)")


def live(*argv: str, timeout: float = 300, display: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env |= {"OMP_NUM_THREADS": "1", **(display or {})}
    run = subprocess.run([sys.executable, "-m", "edgekit.cli", *argv], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=timeout)
    assert run.returncode in (0, 2), f"ended by {run.returncode} (negative: a signal)\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """Four frames of 96x64: small enough that every app's eager model is quick on it."""
    path = tmp_path_factory.mktemp("live") / "clip.mp4"
    writer = VideoWriter(path, 10.0, 96, 64)
    for i in range(4):
        writer.write(np.full((64, 96, 3), 60 * i, np.uint8))
    writer.close()
    return path


@pytest.mark.parametrize("app", VIDEO_APPS)
def test_no_display_falls_back_to_headless(app, clip, tmp_path):
    out = tmp_path / "overlay.mp4"
    run = live(app, "live", "--source", str(clip), "--max-frames", "2", "-o", str(out), *WEIGHTS[app])
    assert run.returncode == 0, run.stderr[-3000:]
    notices = [line for line in run.stderr.splitlines() if "no display" in line]
    assert len(notices) == 1 and "running headless" in notices[0] and str(out) in notices[0]
    assert out.is_file() and "2 frames processed" in run.stderr


def test_no_display_without_output_still_runs(clip):
    run = live("chimp", "live", "--source", str(clip), "--max-frames", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "running headless; pass -o out.mp4 to keep the overlay video" in run.stderr


def test_a_display_without_a_server_is_no_display(clip, monkeypatch, tmp_path):
    stale = next(f":{n}" for n in range(90, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("DISPLAY", stale)
    assert video.display_problem() == f"DISPLAY={stale} has no X server"
    monkeypatch.setenv("DISPLAY", "remote.example:0")  # not checkable from here: taken on trust
    assert video.display_problem() is None
    monkeypatch.delenv("DISPLAY")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-none")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert video.display_problem() == "WAYLAND_DISPLAY=wayland-none has no socket"
    run = live("chimp", "live", "--source", str(clip), "--max-frames", "1", display={"DISPLAY": stale})
    assert run.returncode == 0 and f"no display (DISPLAY={stale} has no X server)" in run.stderr, run.stderr


@pytest.mark.skipif(not NO_CAMERA, reason="this machine has a camera at /dev/video0")
@pytest.mark.parametrize("app", VIDEO_APPS)
def test_no_camera_names_the_fix(app):
    run = live(app, "live", "--max-frames", "1", *WEIGHTS[app])  # the default source: camera 0
    assert run.returncode == 2
    assert "no camera at /dev/video0" in run.stderr and "--source" in run.stderr


def test_no_microphone_names_the_fix():
    run = live("asr", "live", "--duration", "1", timeout=120)
    if run.returncode == 0:  # this machine has a microphone: it listened for a second
        assert "asr live:" in run.stderr
    else:
        assert "--source FILE.wav" in run.stderr and "edgekit: error:" in run.stderr
