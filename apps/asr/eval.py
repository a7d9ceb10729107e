"""Word error rate and real-time factor over a folder of WAV files with a Sphinx-style transcript list."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import jiwer

from edgekit.apps.progress import track
from edgekit.errors import EdgekitError

from .features import SAMPLE_RATE, load_audio

# "<s> words </s> (utterance_id)" per line, as in CMU Sphinx test sets; the <s> markers are optional.
_LINE = re.compile(r"^(?:<s>)?\s*(?P<text>.*?)\s*(?:</s>)?\s*\((?P<id>[^()]+)\)\s*$")
NORMALIZE = jiwer.Compose([
    jiwer.ToLowerCase(),
    jiwer.SubstituteRegexes({r"[-‐–—]": " "}),  # "cold-hearted" reads as two words, as in the references
    jiwer.RemovePunctuation(),
    jiwer.RemoveMultipleSpaces(),
    jiwer.Strip(),
    jiwer.ReduceToListOfListOfWords(),
])


@dataclass(frozen=True)
class Utterance:
    wav: Path
    reference: str


def read_dataset(folder) -> list[Utterance]:
    folder = Path(folder)
    lists = sorted(folder.glob("*transcription"))
    if not lists:
        raise EdgekitError(f"{folder}: no transcript list found. Put the WAV files next to a file named "
                           "`transcription` (or NAME.transcription) with lines `words (wav file stem)`.")
    utterances = []
    for line in lists[0].read_text().splitlines():
        if not line.strip():
            continue
        match = _LINE.match(line)
        if not match:
            raise EdgekitError(f"{lists[0]}: cannot read line {line!r}; expected `words (wav file stem)`.")
        wav = folder / f"{match['id']}.wav"
        if not wav.is_file():
            raise EdgekitError(f"{lists[0]} lists {match['id']!r} but {wav} does not exist.")
        utterances.append(Utterance(wav, match["text"]))
    return utterances


def wer(references: list[str], hypotheses: list[str]) -> float:
    return jiwer.wer(references, hypotheses, reference_transform=NORMALIZE, hypothesis_transform=NORMALIZE)


def evaluate(transcribe, utterances: list[Utterance], on_row=None) -> dict:
    """`transcribe(audio_16k) -> text` over every utterance: WER, RTF (wall seconds / audio seconds), CPU RTF
    (this process's CPU seconds, all threads, / audio seconds: steadier than RTF on a shared machine), texts.
    `on_row` gets each utterance's row (wav, reference, hypothesis) as it is transcribed."""
    rows, compute, cpu, audio_seconds = [], 0.0, 0.0, 0.0
    for utt in track(utterances, "asr eval", unit="clips"):
        audio = load_audio(utt.wav)
        start, start_cpu = time.perf_counter(), time.process_time()
        text = transcribe(audio)
        compute += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        audio_seconds += len(audio) / SAMPLE_RATE
        rows.append({"wav": utt.wav.name, "reference": utt.reference, "hypothesis": text})
        if on_row:
            on_row(rows[-1])
    return {"wer": wer([r["reference"] for r in rows], [r["hypothesis"] for r in rows]),
            "rtf": compute / audio_seconds, "cpu_rtf": cpu / audio_seconds, "audio_seconds": audio_seconds, "utterances": rows}
