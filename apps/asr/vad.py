"""Voice activity detection with silero-vad (the package ships its model): speech windows for long files, and the
streaming detector used by `edgekit asr live`."""
from __future__ import annotations

import numpy as np
import torch

from .features import SAMPLE_RATE

CHUNK = 512  # samples per detector call at 16 kHz, fixed by the silero model


def load_vad():
    threads = torch.get_num_threads()
    from silero_vad import load_silero_vad  # importing it sets torch to one thread; keep the caller's choice

    model = load_silero_vad()
    torch.set_num_threads(threads)
    return model


def windows(audio: np.ndarray, max_seconds: int, vad=None) -> list[np.ndarray]:
    """Cut `audio` at pauses into pieces of at most `max_seconds`: consecutive speech segments are merged while
    they fit, and a segment longer than that is split. Audio that already fits is returned whole."""
    limit = max_seconds * SAMPLE_RATE
    if len(audio) <= limit:
        return [audio]
    from silero_vad import get_speech_timestamps

    spans = get_speech_timestamps(torch.from_numpy(audio), vad or load_vad(), sampling_rate=SAMPLE_RATE)
    pieces: list[list[int]] = []
    for span in spans:
        for start in range(span["start"], span["end"], limit):
            end = min(start + limit, span["end"])
            if pieces and end - pieces[-1][0] <= limit:
                pieces[-1][1] = end
            else:
                pieces.append([start, end])
    return [audio[start:end] for start, end in pieces]
