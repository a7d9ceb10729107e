"""`make bench` cases: BlazePose's detector and full landmark networks (imported from TFLite), the KTPFormer lifter."""
from __future__ import annotations

import os
from pathlib import Path


def cases() -> list:
    from edgekit.benchsuite import ModelCase

    from .model import DETECTOR_FILE, compile_models

    have_blazepose = (Path(os.environ.get("EDGEKIT_WEIGHTS", "")) / "mediapipe" / DETECTOR_FILE).is_file()
    cases = []
    for name, build in compile_models().items():
        if name != "lifter" and not have_blazepose:
            continue
        module, inputs, options = build()
        label = "ktpformer_lifter" if name == "lifter" else f"blazepose_{name}"
        cases.append(ModelCase(label, module, inputs, options=options))
    return cases
