"""Live transcription: a capture thread fills a ring buffer, the main loop runs the VAD on what is new and
transcribes each utterance (partials while it goes on, a final one when the speaker pauses)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from edgekit.errors import EdgekitError

from .features import SAMPLE_RATE
from .vad import CHUNK, load_vad

BLOCK = 320  # 20 ms capture blocks


class RingBuffer:
    """The last `seconds` of audio, written by a capture thread (whisper.cpp's audio_async pattern), addressed by
    absolute sample index. `take()` returns what arrived since the previous take; a reader that falls behind by
    more than the capacity loses the oldest audio and the overrun is counted, so the app warns instead of lagging
    ever further behind."""

    def __init__(self, seconds: float):
        self._data = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
        self._lock = threading.Lock()
        self._written = 0       # samples pushed since the start
        self._read = 0
        self._last_push = time.perf_counter()
        self.overruns = 0
        self.dropped = 0        # samples overwritten before they were taken

    def push(self, samples: np.ndarray) -> None:
        with self._lock:
            size = len(self._data)
            kept = samples[-size:]
            self._written += len(samples)
            self._data[(self._written - len(kept) + np.arange(len(kept))) % size] = kept
            self._last_push = time.perf_counter()
            if self._written - self._read > size:
                self.dropped += self._written - size - self._read
                self._read = self._written - size
                self.overruns += 1

    @property
    def taken(self) -> int:
        """Samples handed to the reader so far."""
        with self._lock:
            return self._read - self.dropped

    def take(self) -> tuple[int, np.ndarray]:
        """(absolute index of the first sample, samples) not taken before."""
        with self._lock:
            first, self._read = self._read, self._written
            return first, self._span(first, self._written)

    def span(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) by absolute index; the part already overwritten is left out."""
        with self._lock:
            return self._span(max(start, self._written - len(self._data)), min(end, self._written))

    def _span(self, start: int, end: int) -> np.ndarray:
        return self._data[np.arange(start, end) % len(self._data)]

    def arrival_time(self, sample: int) -> float:
        """perf_counter() at which absolute sample `sample` was captured, from the real-time capture rate."""
        with self._lock:
            return self._last_push - (self._written - sample) / SAMPLE_RATE


@dataclass
class Event:
    kind: str          # "partial" or "final"
    text: str
    start: float       # seconds into the stream
    end: float
    compute: float             # seconds spent transcribing
    latency: float | None = None  # final only: seconds from the end of speech to this transcript


def replay(audio: np.ndarray, ring: RingBuffer, done: threading.Event, tail_seconds: float = 1.0,
           loop: bool = False, duration: float = 0.0) -> threading.Thread:
    """Feed a recording into `ring` at real-time pace, then some silence so the last utterance ends naturally;
    with `loop` again and again. Stops after `duration` seconds of audio (0: at the end), then sets `done`."""
    audio = np.concatenate([audio, np.zeros(int(tail_seconds * SAMPLE_RATE), np.float32)])
    limit = int(duration * SAMPLE_RATE) or None

    def run():
        start, fed = time.perf_counter(), 0
        while True:
            for i in range(0, len(audio), BLOCK):
                if limit is not None and fed >= limit:
                    done.set()
                    return
                time.sleep(max(0.0, start + fed / SAMPLE_RATE - time.perf_counter()))
                block = audio[i:i + BLOCK]
                ring.push(block)
                fed += len(block)
            if not loop:
                break
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class Microphone:
    """Default input device through sounddevice/PortAudio, at 16 kHz mono, pushing into `ring`."""

    # No audio for this long means the device is gone. PulseAudio may take seconds to deliver the first block.
    STARTUP_SECONDS, STALL_SECONDS = 10.0, 5.0

    def __init__(self, ring: RingBuffer, device=None):
        sd = self._sd = _sounddevice()
        try:
            sd.query_devices(device, kind="input")
        except (ValueError, sd.PortAudioError):
            raise EdgekitError("no audio input device found. Connect a microphone (or start PulseAudio), "
                               "or replay a recording with --source FILE.wav.") from None
        try:
            self.stream = sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32", blocksize=BLOCK,
                                         device=device, callback=self._callback)
        except sd.PortAudioError as exc:
            raise _cannot_open(exc) from None
        self.ring = ring
        self.started = self.last_block = None

    def _callback(self, block, _frames, _time, _status):
        self.ring.push(block[:, 0].copy())  # only copies: the reader, not this thread, is where lag can build up
        self.last_block = time.perf_counter()

    def check(self) -> None:
        """Raise an EdgekitError when the running input stopped (unplugged, or taken by another program)."""
        now, last = time.perf_counter(), self.last_block
        stalled = now - self.started > self.STARTUP_SECONDS if last is None else now - last > self.STALL_SECONDS
        if not self.stream.active or stalled:
            raise EdgekitError("the microphone stopped delivering audio: was it unplugged, or taken by another "
                               "program? Reconnect it and start again; the transcripts so far are complete.")

    def __enter__(self):
        try:
            self.stream.start()
        except self._sd.PortAudioError as exc:
            self.stream.close()
            raise _cannot_open(exc) from None
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        try:
            self.stream.stop()
            self.stream.close()
        except self._sd.PortAudioError:
            pass  # a device that vanished cannot be stopped; the stream is gone either way


def _cannot_open(exc) -> EdgekitError:
    return EdgekitError(f"cannot open the audio input ({exc}). Check that the microphone is connected, not used "
                        "by another program, and that this user may record (the 'audio' group, or the desktop's "
                        "privacy settings); or replay a recording with --source FILE.wav.")


def _sounddevice():
    try:
        import sounddevice
    except OSError:
        raise EdgekitError("the PortAudio library is missing. Install it (`apt-get install libportaudio2`) "
                           "or replay a recording with --source FILE.wav.") from None
    return sounddevice


class Streamer:
    """Turns a ring buffer into partial and final transcripts with `transcribe(audio, draft=text) -> text`."""

    def __init__(self, transcribe: Callable[[np.ndarray], str], max_seconds: float, partial_every: float = 1.0,
                 min_silence_ms: int = 200, speech_pad_ms: int = 100):
        from silero_vad import VADIterator

        self.transcribe, self.max_samples = transcribe, int(max_seconds * SAMPLE_RATE)
        self.partial_samples = int(partial_every * SAMPLE_RATE)
        self.pad = speech_pad_ms * SAMPLE_RATE // 1000
        self.vad = VADIterator(load_vad(), sampling_rate=SAMPLE_RATE, min_silence_duration_ms=min_silence_ms,
                               speech_pad_ms=speech_pad_ms)

    def run(self, ring: RingBuffer, finished: Callable[[], bool]) -> Iterator[Event | str]:
        """Events until `finished()` and the buffer is drained; a str is an overrun warning.

        Where the final transcript's time goes: the detector calls an utterance over only after
        `min_silence_ms` of silence. The utterance's end (the first silent chunk, plus the speech pad) is
        known from that silence's first chunk, so the final transcript is computed then, while the silence is
        still being confirmed, and kept if the detector confirms that same end (speech that resumes discards
        it). Each transcription gets the utterance's latest partial as a draft (see WhisperRecognizer)."""
        pending, position, overruns = np.zeros(0, np.float32), 0, 0   # position: absolute index after `pending`
        start, partial_at, partial_cost = None, 0, 0.0               # start: utterance start, absolute index
        draft, early, offset = "", None, 0                           # early: (start, end, event) computed ahead
        while True:
            done = finished()
            first, new = ring.take()
            if ring.overruns > overruns:
                overruns = ring.overruns
                pending = np.zeros(0, np.float32)
                yield f"overrun: transcription fell behind the input and dropped audio ({overruns} so far)"
            pending, position = np.concatenate([pending, new]), first + len(new)
            while len(pending) >= CHUNK:
                chunk, pending = pending[:CHUNK], pending[CHUNK:]
                chunk_end = position - len(pending)
                offset = chunk_end - CHUNK - self.vad.current_sample  # detector counts only what it was fed
                with torch.inference_mode():
                    mark = self.vad(torch.from_numpy(chunk)) or {}
                if "start" in mark:
                    start = partial_at = mark["start"] + offset
                    draft, early = "", None
                elif start is not None and "end" in mark:
                    end = min(mark["end"] + offset, chunk_end)
                    yield self._final(ring, start, end, mark["end"] + offset - self.pad, draft,
                                      early[2] if early and early[:2] == (start, end) else None)
                    start, draft, early = None, "", None
                elif start is not None and chunk_end - start >= self.max_samples:
                    yield self._final(ring, start, chunk_end, None, draft)
                    start = partial_at = chunk_end  # speech goes on: the next utterance starts here
                    draft, early = "", None
            silence_from = self.vad.temp_end + offset if start is not None and self.vad.temp_end else None
            if silence_from is None:
                early = None
            elif early is None or early[:2] != (start, silence_from + self.pad - CHUNK):
                end = silence_from + self.pad - CHUNK  # where the detector will put the end if silence holds
                if position >= end:
                    early = (start, end, self._event("final", ring, start, end, draft))
            # No partial once the speaker pauses (it would delay the final the pause is about to bring), and at
            # most a third of the time spent on partials, so a slow machine does not fall behind.
            gap = max(self.partial_samples, 3 * partial_cost * SAMPLE_RATE)
            if start is not None and silence_from is None and position - partial_at >= gap:
                partial_at = position
                event = self._event("partial", ring, start, position, draft)
                partial_cost, draft = event.compute, event.text
                yield event
            if done:
                if start is not None:
                    yield self._final(ring, start, position, None, draft)
                return
            time.sleep(0.01)

    def _final(self, ring, start, end, speech_end, draft, ready: Event | None = None) -> Event:
        """`speech_end`: where the detector heard speech stop; None when the utterance was cut instead.
        `ready`: this final, transcribed ahead while the silence was being confirmed."""
        event = ready or self._event("final", ring, start, end, draft)
        if speech_end is not None:
            event.latency = time.perf_counter() - ring.arrival_time(speech_end)
        return event

    def _event(self, kind, ring, start, end, draft) -> Event:
        began = time.perf_counter()
        text = self.transcribe(ring.span(start, end), draft=draft)
        return Event(kind, text, start / SAMPLE_RATE, end / SAMPLE_RATE, time.perf_counter() - began)
