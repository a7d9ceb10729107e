"""What the apps' long loops tell the user while they run: a progress bar on stderr and JSON lines on stdout.

`track(items, "pose run", unit="frames")` wraps any loop over frames, files or clips in a rich progress bar with its
rate and ETA (a spinner with the rate when the total is unknown). Bars go to stderr and are off with `--quiet` or
when stderr is not a terminal (logs and pipes get the one-line summaries only). `configure(args)` is called for every
command line (through edgekit.apps.media.configure).

`JsonLines(enabled)` is what `--json` prints: one object per result as it arrives ({"type": "frame", ...}), then one
{"type": "summary", ...} object at the end, each flushed at once so Ctrl-C loses nothing already printed.
`read_json_lines(text)` splits such an output into (items, summary).
"""
from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator

_settings = {"quiet": False}


def configure(args) -> None:
    """--quiet of this command line (a count or a flag; absent: not quiet)."""
    _settings["quiet"] = bool(getattr(args, "quiet", False))


def enabled() -> bool:
    """Whether progress is shown: stderr is a terminal, and neither --quiet nor a logging level above INFO for
    edgekit's logger asks for silence."""
    logger = logging.getLogger("edgekit")
    quiet = _settings["quiet"] or (logger.level != logging.NOTSET and logger.level > logging.INFO)
    return not quiet and _is_terminal(sys.stderr)


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def say(message: str) -> None:
    """One status line on stderr (e.g. "loading models ..."): an INFO message of edgekit's logger where the command
    line set it up (-q hides it), else printed unless --quiet."""
    logger = logging.getLogger("edgekit")
    if logger.handlers:
        logger.info(message)
    elif not _settings["quiet"]:
        print(message, file=sys.stderr, flush=True)


def track(items: Iterable, description: str, *, total: int | None = None, unit: str = "frames") -> Iterator:
    """The items of `items`, with a progress bar while they are consumed (see the module docstring)."""
    if not enabled():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with _bar(unit) as bar:
        task = bar.add_task(description, total=total or None)
        for item in items:
            yield item
            bar.advance(task)


def _bar(unit: str):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.2f} {unit}/s" if speed else f"-- {unit}/s", style="progress.data.speed")

    # stdout is left alone: it carries the --json lines; stderr prints go above the bar
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True, redirect_stdout=False)


class JsonLines:
    """--json output: `item(kind, record)` per result, `summary(record)` at the end; nothing when not enabled."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def item(self, kind: str, record: dict) -> None:
        self._print({"type": kind, **record})

    def summary(self, record: dict) -> None:
        self._print({"type": "summary", **record})

    def _print(self, record: dict) -> None:
        if self.enabled:
            print(json.dumps(record), flush=True)


def read_json_lines(text: str) -> tuple[list[dict], dict | None]:
    """(the result objects, the summary object or None when the run was cut short) of a --json output."""
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    if records and records[-1].get("type") == "summary":
        return records[:-1], records[-1]
    return records, None
