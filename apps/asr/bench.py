"""`make bench` cases: Whisper tiny.en's encoder (10 s live window) and one KV-cached decoder step, and the
Samba-ASR CTC graph, on every backend (the graphs `edgekit compile --model asr.*` builds)."""
from __future__ import annotations

from edgekit.apps.spec import ModelCase

LIVE_WINDOW = 10  # seconds; the window `asr live` and the README's RTF figures use


def cases() -> list:
    from .model import compile_models

    return [ModelCase.from_spec(f"asr_{name}", build()) for name, build in compile_models(window=LIVE_WINDOW).items()]
