"""`make bench` cases: the chimp detector (3-frame clip) and the behavior transformer, shipped weights."""
from __future__ import annotations


def cases() -> list:
    from edgekit.benchsuite import ModelCase

    from .model import compile_models

    cases = []
    for name, build in compile_models().items():
        module, inputs, options = build()
        cases.append(ModelCase(f"chimp_{name}", module, inputs, options=options))
    return cases
