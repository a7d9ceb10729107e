"""The kernels' on-disk library cache: one location, one atomic writer, for attention and scan alike.

Location: $EDGEKIT_KERNEL_CACHE, else $EDGEKIT_CACHE/kernels, else the platform's user cache directory for edgekit
(platformdirs; ~/.cache/edgekit/kernels on Linux, honouring XDG_CACHE_HOME) - the rule of edgekit/paths.py, which the
kernels cannot import (they import nothing of edgekit); tests/test_paths.py holds the two equal.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import Callable

import platformdirs


def cache_dir() -> Path:
    root = os.environ.get("EDGEKIT_CACHE") or platformdirs.user_cache_path("edgekit")
    return Path(os.environ.get("EDGEKIT_KERNEL_CACHE") or Path(root) / "kernels").expanduser()


def library(name: str, export: Callable[[Path], None]) -> Path:
    """Path of `name` (a file name, e.g. "scan-<key>.so") in the cache, calling export(path) to build it first when
    missing. Built under a temporary name and renamed, under a lock: concurrent builders build once and never load
    a partial file."""
    path = cache_dir() / name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{name}.") as tmp:
                staged = Path(tmp) / name
                export(staged)
                os.replace(staged, path)
    return path
