"""`make bench` cases: BlazePose's detector and full landmark networks (imported from TFLite)."""
from __future__ import annotations

import os
from pathlib import Path


def cases() -> list:
    from edgekit.benchsuite import ModelCase

    from .model import DETECTOR_FILE, compile_models

    if not (Path(os.environ.get("EDGEKIT_WEIGHTS", "")) / "mediapipe" / DETECTOR_FILE).is_file():
        return []
    cases = []
    for name, build in compile_models().items():
        module, inputs, options = build()
        cases.append(ModelCase(f"blazepose_{name}", module, inputs, options=options))
    return cases
