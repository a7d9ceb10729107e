"""`make bench` cases: Whisper tiny.en's encoder (10 s live window) and one KV-cached decoder step, and the
Samba-ASR CTC graph, on every backend (the graphs `edgekit compile --model asr.*` builds)."""
from __future__ import annotations

LIVE_WINDOW = 10  # seconds; the window `asr live` and the README's RTF figures use


def cases() -> list:
    from edgekit.benchsuite import ModelCase

    from .model import compile_models

    cases = []
    for name, build in compile_models(window=LIVE_WINDOW).items():
        module, inputs, options = build()
        cases.append(ModelCase(f"asr_{name}", module, inputs, options=options))
    return cases
