"""Progress bars on a terminal only (off with --quiet), and --json lines printed as results arrive."""
import argparse
import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.apps import progress
from edgekit.apps.video import VideoWriter

REPO = Path(__file__).resolve().parents[2]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch):
    """stderr as a terminal (set in the test itself: pytest's capture replaces sys.stderr after fixtures run)."""
    monkeypatch.setattr(logging.getLogger("edgekit"), "level", logging.NOTSET)
    yield lambda: monkeypatch.setattr(sys, "stderr", Terminal()) or sys.stderr
    progress.configure(argparse.Namespace())


def test_bar_with_rate_on_a_terminal(terminal):
    terminal = terminal()
    assert progress.enabled()
    assert list(progress.track(range(3), "work", unit="clips")) == [0, 1, 2]
    shown = terminal.getvalue()
    assert "work" in shown and "3/3" in shown and "clips/s" in shown and "ETA" in shown


def test_quiet_and_pipes_get_no_bar(terminal, monkeypatch):
    terminal()
    assert progress.enabled()
    progress.configure(argparse.Namespace(quiet=1))
    assert not progress.enabled()
    progress.configure(argparse.Namespace())
    monkeypatch.setattr(logging.getLogger("edgekit"), "level", logging.WARNING)  # what -q sets
    assert not progress.enabled()
    monkeypatch.setattr(logging.getLogger("edgekit"), "level", logging.INFO)
    assert progress.enabled()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a log file
    assert not progress.enabled()
    assert list(progress.track([4, 5], "work")) == [4, 5]


def test_json_lines_split_into_results_and_summary(capsys):
    lines = progress.JsonLines(True)
    lines.item("frame", {"frame": 0})
    lines.item("frame", {"frame": 1})
    lines.summary({"frames": 2})
    items, summary = progress.read_json_lines(capsys.readouterr().out)
    assert items == [{"type": "frame", "frame": 0}, {"type": "frame", "frame": 1}]
    assert summary == {"type": "summary", "frames": 2}
    assert progress.read_json_lines('{"type": "frame", "frame": 0}\n') == ([{"type": "frame", "frame": 0}], None)
    progress.JsonLines(False).item("frame", {"frame": 0})
    assert capsys.readouterr().out == ""


def test_ctrl_c_keeps_the_frames_already_printed(tmp_path):
    """`chimp run --json` interrupted after its first result: what was printed is complete JSON lines."""
    clip = tmp_path / "long.mp4"
    writer = VideoWriter(clip, 10.0, 96, 64)
    for i in range(400):
        writer.write(np.full((64, 96, 3), i % 256, np.uint8))
    writer.close()
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")} | {"OMP_NUM_THREADS": "1"}
    # Ctrl-C as in a terminal: a job started in the background of a non-interactive shell (CI scripts) inherits an
    # ignored SIGINT, which Python then keeps ignoring
    run = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "chimp", "run", str(clip), "--json"], cwd=REPO,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = json.loads(run.stdout.readline())  # arrives while the rest of the video is still being processed
        run.send_signal(signal.SIGINT)
        rest, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert first["type"] == "frame" and first["frame"] == 0
    items, summary = progress.read_json_lines(rest)
    assert summary is None and len(items) < 399  # cut short, and every line printed is whole
    assert [f["frame"] for f in items] == list(range(1, len(items) + 1))
    assert run.returncode == 130 and "interrupted" in err and "Traceback" not in err
