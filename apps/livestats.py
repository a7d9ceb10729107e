"""What bounds a live run (--loop, --duration) and what it reports (--stats): shared by the video apps and asr."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgekit.errors import EdgekitError

STATS_EVERY = 5.0  # seconds between --stats lines


def add_run_arguments(parser, source: str) -> None:
    """--loop, --duration and --stats for a live command whose file source is `source` ("video", "WAV")."""
    parser.add_argument("--loop", action="store_true", help=f"restart a {source} file source when it ends")
    parser.add_argument("--duration", type=_seconds, default=0.0, metavar="SECONDS",
                        help="stop after this many seconds of live input; 0 runs until the source ends or you stop "
                             "it (default: %(default)s)")
    parser.add_argument("--stats", metavar="FILE.jsonl",
                        help=f"append a JSON line of cumulative counts (processed, dropped) to this file every "
                             f"{STATS_EVERY:g} s and at the end")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds >= 0")
    return value


class StatsLog:
    """Writes `counts()` (a dict) with the time since the start as one JSON line every STATS_EVERY seconds from a
    background thread, and a final line on close. Nothing is written without a path."""

    def __init__(self, path: str | None, counts: Callable[[], dict], every: float = STATS_EVERY):
        self.path, self.counts, self.every = path, counts, every
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._file = None
        if path is None:
            return
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", buffering=1)
        except OSError as exc:
            raise EdgekitError(f"cannot write the --stats file {path}: {exc.strerror}. Pick a writable path.") \
                from None
        self._write({})
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._write({})

    def _write(self, extra: dict) -> None:
        line = {"time": time.time(), "t": round(time.perf_counter() - self.start, 3), **self.counts(), **extra}
        self._file.write(json.dumps(line) + "\n")

    def close(self, **extra) -> None:
        """Stop the thread and write the last line with `extra` (e.g. end="source ended")."""
        if self._file is None:
            return
        self._stop.set()
        self._thread.join()
        self._write({"final": True, **extra})
        self._file.close()
        self._file = None
