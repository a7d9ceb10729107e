"""Training speech made here: English sentences (the Debian `fortunes` collection) spoken by espeak-ng and flite
voices, with speed, pitch, gain, noise, reverberation and band-limiting augmentation, stored as log-mel shards.

Voices are split by name: the test voices (an accent and voice variants of espeak-ng, and flite's `slt`) never
speak a training sentence, and test sentences are never in the training set, so the test WER is on unseen voices
and unseen text. Everything is seeded: the same arguments give the same shards.

    python -m edgekit.apps.asr.tts_data --out out/asr-tts --train 6000 --test 200
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.io import wavfile
from scipy.signal import fftconvolve

from edgekit.errors import EdgekitError

from .features import SAMPLE_RATE, resample, to_float

FORTUNES = Path("/usr/share/games/fortunes")
ESPEAK_TRAIN = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan")
ESPEAK_TEST = ("en-029", "en-gb-x-gbcwmd")
VARIANTS_TRAIN = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt2", "klatt3",
                  "adam", "Alex", "Andy", "benjamin", "david", "edward", "iven", "john", "linda", "max", "paul",
                  "quincy", "rob", "steph", "travis", "victor")
VARIANTS_TEST = ("f5", "m8", "Annie", "robert", "norbert", "shelby")
FLITE_TRAIN = ("kal", "kal16", "awb", "rms")
FLITE_TEST = ("slt",)
MIN_WORDS, MAX_WORDS = 3, 14
TOOLS = {"espeak-ng": "espeak-ng", "flite": "flite"}


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak" or "flite"
    name: str

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}"


def voices(split: str) -> list[Voice]:
    test = split == "test"
    espeak = [Voice("espeak", f"{v}+{var}") for v in (ESPEAK_TEST if test else ESPEAK_TRAIN)
              for var in (VARIANTS_TEST if test else VARIANTS_TRAIN)]
    flite = [Voice("flite", v) for v in (FLITE_TEST if test else FLITE_TRAIN)]
    # flite has few voices: weight them so about a quarter of the audio is flite's
    return espeak + flite * max(1, len(espeak) // (3 * len(flite)))


def normalize_text(text: str) -> str:
    """Lower case, letters, apostrophes and single spaces: what the CTC head spells."""
    text = re.sub(r"[-‐–—/]", " ", text.lower())
    text = re.sub(r"[^a-z' ]", "", text)
    return re.sub(r" +", " ", text).strip(" '")


def sentences(exclude: set[str] = frozenset()) -> list[str]:
    """Plain sentences of MIN_WORDS..MAX_WORDS words from the fortunes collection, deduplicated and sorted."""
    if not FORTUNES.is_dir():
        raise EdgekitError(f"{FORTUNES} not found: the training text is the Debian `fortunes` package "
                           "(apt-get install fortunes).")
    found = set()
    for path in sorted(FORTUNES.glob("*.u8")):
        for entry in path.read_text(errors="replace").split("\n%\n"):
            # attributions ("-- Author") are not part of the sentence
            flat = " ".join(line for line in entry.splitlines() if not line.strip().startswith("--"))
            flat = " ".join(flat.split())
            for sentence in re.split(r"(?<=[.!?])\s+", flat):
                if re.search(r"[0-9@#$%&*=<>_|\\{}\[\]~^+]", sentence) or ":" in sentence:
                    continue  # numbers and symbols are read out in ways the text does not spell
                words = normalize_text(sentence).split()
                if MIN_WORDS <= len(words) <= MAX_WORDS and all(len(w) < 16 for w in words):
                    found.add(" ".join(words))
    return sorted(found - set(exclude))


def check_tools() -> None:
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise EdgekitError(f"text-to-speech engines missing: {', '.join(missing)}. "
                           f"Install them: apt-get install -y {' '.join(missing)} fortunes")


def synthesize(voice: Voice, text: str, rng: np.random.Generator, workdir: Path) -> np.ndarray:
    """16 kHz float audio of `text` in `voice` at a random speed and pitch."""
    wav = workdir / "tts.wav"
    if voice.engine == "espeak":
        cmd = ["espeak-ng", "-v", voice.name, "-s", str(int(rng.uniform(125, 215))),
               "-p", str(int(rng.uniform(25, 80))), "-w", str(wav), text]
    else:
        cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={rng.uniform(0.8, 1.3):.2f}",
               "--setf", f"int_f0_target_mean={rng.uniform(85, 190):.0f}", "-t", text, "-o", str(wav)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    rate, data = wavfile.read(wav)
    return resample(to_float(data), rate)


def augment(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Silence around the speech, band-limiting (8 kHz round trip), reverberation, noise and gain."""
    pad = [np.zeros(int(rng.uniform(0.05, 0.4) * SAMPLE_RATE), np.float32) for _ in range(2)]
    audio = np.concatenate([pad[0], audio / (np.abs(audio).max() + 1e-6), pad[1]])
    if rng.random() < 0.3:  # telephone-like band: resample through 8 kHz
        audio = resample(resample(audio, SAMPLE_RATE)[::2].copy(), SAMPLE_RATE // 2)[:len(audio)]
    if rng.random() < 0.3:  # a synthetic room: exponentially decaying noise impulse response
        rt60 = rng.uniform(0.15, 0.6)
        t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
        rir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
        rir[0] = 1.0 / rng.uniform(0.3, 1.0)
        audio = fftconvolve(audio, rir / np.abs(rir).sum() * 4)[:len(audio)]
        audio = audio / (np.abs(audio).max() + 1e-6)
    if rng.random() < 0.7:
        noise = rng.standard_normal(len(audio))
        if rng.random() < 0.5:  # pink-ish: integrate white noise a little
            noise = np.convolve(noise, np.exp(-np.arange(8) / 2.0), mode="same")
        snr = rng.uniform(5, 40)
        noise *= np.sqrt(np.mean(audio ** 2) / (np.mean(noise ** 2) * 10 ** (snr / 10)))
        audio = audio + noise
    return (audio / (np.abs(audio).max() + 1e-6) * rng.uniform(0.1, 0.95)).astype(np.float32)


def make_split(split: str, texts: list[str], count: int, seed: int, out: Path, mel, shard_size: int = 500):
    """`count` utterances: shards `{split}-NNN.npz` (features float16, lengths, texts, voices). Each shard has
    its own seed, so an interrupted run resumes at the first missing shard with the same result."""
    pool = voices(split)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for shard in range(0, count, shard_size):
            path = out / f"{split}-{shard // shard_size:03d}.npz"
            if path.is_file():
                continue
            rng = np.random.default_rng([seed, shard // shard_size])
            feats, rows = [], []
            for _ in range(shard, min(shard + shard_size, count)):
                text = texts[rng.integers(len(texts))]
                voice = pool[rng.integers(len(pool))]
                audio = augment(synthesize(voice, text, rng, Path(tmp)), rng)
                with torch.inference_mode():
                    feats.append(mel(torch.from_numpy(audio)[None])[0].T.numpy().astype(np.float16))
                rows.append({"text": text, "voice": str(voice)})
            lengths = np.array([len(f) for f in feats])
            staged = path.with_suffix(".tmp.npz")
            np.savez(staged, features=np.concatenate(feats), lengths=lengths,
                     texts=np.array([r["text"] for r in rows]), voices=np.array([r["voice"] for r in rows]))
            staged.rename(path)
            print(f"{split}: {min(shard + shard_size, count)}/{count} utterances", flush=True)


def load_split(folder: Path, split: str) -> tuple[list[np.ndarray], list[str], list[str]]:
    """(features (frames, n_mels) per utterance, texts, voices) from the shards of `split`."""
    shards = sorted(Path(folder).glob(f"{split}-[0-9][0-9][0-9].npz"))
    if not shards:
        raise EdgekitError(f"{folder}: no {split} shards. Make them with "
                           f"`python -m edgekit.apps.asr.tts_data --out {folder}`.")
    feats, texts, names = [], [], []
    for path in shards:
        z = np.load(path)
        ends = np.cumsum(z["lengths"])
        feats += np.split(z["features"], ends[:-1])
        texts += [str(t) for t in z["texts"]]
        names += [str(v) for v in z["voices"]]
    return feats, texts, names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--train", type=int, default=6000, help="training utterances")
    p.add_argument("--test", type=int, default=200, help="test utterances (unseen voices and sentences)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exclude", type=Path, help="a Sphinx transcript list whose sentences must not be trained on")
    args = p.parse_args(argv)
    check_tools()
    torch.set_num_threads(1)
    from .samba import SambaFrontEnd

    exclude = set()
    if args.exclude:
        from .eval import read_dataset
        exclude = {normalize_text(u.reference) for u in read_dataset(args.exclude.parent)}
    texts = sentences(exclude)
    order = np.random.default_rng(args.seed).permutation(len(texts))
    test_texts = [texts[i] for i in order[:max(args.test, 1)]]
    train_texts = [texts[i] for i in order[max(args.test, 1):]]
    mel = SambaFrontEnd().eval()
    (args.out).mkdir(parents=True, exist_ok=True)
    (args.out / "info.json").write_text(json.dumps({
        "sentences": {"train": len(train_texts), "test": len(test_texts)},
        "voices": {"train": sorted({str(v) for v in voices("train")}), "test": sorted({str(v) for v in voices("test")})},
        "seed": args.seed}, indent=1))
    make_split("test", test_texts, args.test, args.seed + 1, args.out, mel)
    make_split("train", train_texts, args.train, args.seed + 2, args.out, mel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
