"""The options every edgekit command has (`--threads N`, `-v`, `-q`) and the help format, in one place: the CLI adds
them to its whole parser tree and an app's lazily built parser (edgekit.apps.spec) adds them to its own."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .errors import EdgekitError

__all__ = ["HelpFormatter", "add_common", "configure", "check_writable"]


class HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default where it says something: not None, False, an empty list or a suppressed value, and not
    where the help text already names it."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default is argparse.SUPPRESS or default is None
                or default is False or default == [] or isinstance(action, argparse._CountAction)):
            return text
        return f"{text} (default: %(default)s)"


def parsers(parser: argparse.ArgumentParser):
    """The parser and every subcommand's parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from parsers(child)


def add_common(parser: argparse.ArgumentParser) -> None:
    """--threads, -v and -q on `parser` and every subcommand below it (where an app defines its own --threads, its
    definition stays). Defaults are SUPPRESS, so a subcommand's parser never overwrites what came before it."""
    for p in parsers(parser):
        p.formatter_class = HelpFormatter
        if "-" not in p.prefix_chars:  # a placeholder that hands its words to another parser
            continue
        have = p._option_string_actions
        if "--threads" not in have:
            p.add_argument("--threads", type=_positive_int, metavar="N", default=argparse.SUPPRESS,
                           help="CPU threads for torch, OpenMP, OpenCV and the runtimes (default: the physical "
                                "cores, or $OMP_NUM_THREADS)")
        if "-v" not in have and "--verbose" not in have:
            p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                           help="more messages: debug lines and third-party warnings")
        if "-q" not in have and "--quiet" not in have:
            p.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS,
                           help="warnings and errors only, no progress bars (-qq: errors only)")


def configure(args: argparse.Namespace) -> None:
    """Apply -v/-q and --threads of a parsed command line to this process (logging, warning filters, thread
    counts) and check its outputs can be written; call it before torch, OpenCV or a runtime is imported, and again after an app's own parser ran."""
    from . import log, threads

    log.setup(int(getattr(args, "verbose", 0) or 0) - int(getattr(args, "quiet", 0) or 0))
    threads.apply(getattr(args, "threads", None) or threads.default_threads())
    check_writable(args)


# destinations of the options that name something a command writes (a file, or a directory it creates)
OUTPUT_DESTS = ("output", "out", "report_dir", "stats")


def check_writable(args) -> None:
    """Every output of this command line can be created, before any work starts: the nearest existing folder above
    it is a folder this user may write in."""
    for dest in OUTPUT_DESTS:
        value = getattr(args, dest, None)
        if not isinstance(value, (str, Path)) or str(value) in ("", "-"):
            continue
        flag = "--" + dest.replace("_", "-")
        parent = Path(value).expanduser().absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise EdgekitError(f"{flag} {value}: {parent} is not a folder. Choose an output path inside a folder.")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise EdgekitError(f"{flag} {value}: this user may not write in {parent}. Choose a writable place, "
                               "e.g. out/ in the current folder.")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, 1 or more, not {text!r}")
    return value
