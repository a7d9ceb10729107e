"""The speech recognition pipelines around plain callables, numpy in and numpy out, so eager torch and compiled
artifacts run the same code (recognizer.py builds them from weights).

Whisper: audio window -> encoder -> cross-attention keys/values -> greedy decoding token by token through a
decoder (`feed(tokens, start, rows) -> logits`), redone at rising temperatures when the text loops or the model is
unsure. Samba-ASR: audio -> one graph -> CTC log-probabilities and encoder states -> best path, or CTC prefix beam
search with the Mamba decoder's scores (ctc_beam.py).
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy.special import logsumexp

from .common import CACHE_LEN, Graph
from .ctc_beam import BeamOptions, Scorer, beam_search
from .features import HOP, SAMPLE_RATE, pad_window
from .samba import MIN_HOPS, SUBSAMPLE, frame_audio, greedy_ctc

MAX_TOKENS_PER_SECOND = 10   # fast speech is ~5; the cap stops a looping decode early
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class Decoder(Protocol):
    def feed(self, tokens: list[int], start: int, rows: int = 1) -> np.ndarray:
        """Run `tokens` at positions start.. against the cache; the logits after the last `rows` of them."""


@dataclass(frozen=True)
class Vocabulary:
    """Special token ids and the text decoder, from the tokenizer files shipped with the weights."""
    decode: Callable[[list[int]], str]
    encode: Callable[[str], list[int]]
    eot: int
    prompt: tuple[int, ...]      # start of transcript, no timestamps: English-only models take no language/task
    suppress: np.ndarray         # never sampled
    suppress_first: np.ndarray   # not sampled as the first token (blank, end of text)

    @classmethod
    def from_dir(cls, model_dir: Path) -> Vocabulary:
        from tokenizers import Tokenizer  # late: only Whisper needs it

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config = json.loads((model_dir / "config.json").read_text())
        ids = {name: tok.token_to_id(f"<|{name}|>") for name in ("endoftext", "startoftranscript", "notimestamps")}
        return cls(decode=lambda t: tok.decode(t, skip_special_tokens=True).strip(),
                   encode=lambda text: tok.encode(" " + text.strip(), add_special_tokens=False).ids if text.strip()
                   else [], eot=ids["endoftext"],
                   prompt=(ids["startoftranscript"], ids["notimestamps"]),
                   suppress=np.array(config["suppress_ids"]), suppress_first=np.array(config["suppress_ids_begin"]))


class WhisperApp:
    """`app(audio_16k) -> text` for up to `window` seconds of audio (longer audio: see `vad.windows`).

    encoder: padded window (1, window * 16000) -> cross-attention keys and values; decoder: cross -> a fresh
    Decoder for one transcript (e.g. StepDecoder around a compiled step graph)."""

    def __init__(self, encoder: Graph, decoder: Callable[[list[np.ndarray]], Decoder], vocab: Vocabulary,
                 window: int):
        self.encoder, self.decoder, self.vocab, self.window = encoder, decoder, vocab, window

    def warm_up(self) -> WhisperApp:
        """One short silent transcription: loads the attention kernel (TVM's import takes seconds) and builds
        the CPU primitives, so the first real utterance does not wait for them."""
        self.tokens(np.zeros(SAMPLE_RATE, np.float32))
        return self

    def __call__(self, audio: np.ndarray, draft: str = "") -> str:
        """The transcript; `draft`, a guess at it (e.g. the previous partial of a growing utterance), only makes
        decoding faster: its tokens are checked in one decoder pass and kept while greedy decoding agrees."""
        return self.vocab.decode(self.tokens(audio, self.vocab.encode(draft)))

    def tokens(self, audio: np.ndarray, draft: list[int] = ()) -> list[int]:
        """Greedy decoding, redone at rising temperatures when the text loops or the model is unsure
        (Whisper's own fallback rule), with at most MAX_TOKENS_PER_SECOND tokens per second of audio."""
        cross = self.encoder(pad_window(audio, self.window * SAMPLE_RATE))
        limit = min(CACHE_LEN - len(self.vocab.prompt), int(MAX_TOKENS_PER_SECOND * len(audio) / SAMPLE_RATE) + 8)
        rng = np.random.default_rng(0)  # the same audio always gives the same text
        for temperature in TEMPERATURES:
            tokens, logprob = self._decode(cross, limit, temperature, rng, draft if temperature == 0 else ())
            if compression_ratio(self.vocab.decode(tokens)) <= 2.4 and logprob >= -1.0:
                break
        return tokens

    def _decode(self, cross, limit, temperature, rng, draft=()) -> tuple[list[int], float]:
        """(tokens, mean log-probability per token including the end of text)."""
        decoder, prompt = self.decoder(cross), list(self.vocab.prompt)
        draft = list(draft)[:limit]
        rows = list(np.asarray(decoder.feed(prompt + draft, 0, rows=len(draft) + 1)))  # rows[i]: after draft[:i]
        tokens, total = list(prompt), 0.0
        while len(tokens) - len(prompt) < limit:
            logprobs = self._logprobs(rows[0], first=len(tokens) == len(prompt))
            token = int(np.argmax(logprobs) if temperature == 0 else
                        rng.choice(len(logprobs), p=_softmax(logprobs / temperature)))
            total += logprobs[token]
            if token == self.vocab.eot:
                break
            tokens.append(token)
            if len(rows) > 1 and draft[len(tokens) - len(prompt) - 1] == token:
                rows = rows[1:]  # the draft's own token: its successor's logits are computed already
            else:
                rows = list(np.asarray(decoder.feed([token], len(tokens) - 1)))
        generated = tokens[len(prompt):]
        return generated, total / (len(generated) + 1)

    def _logprobs(self, logits: np.ndarray, first: bool) -> np.ndarray:
        logits = logits.astype(np.float64)
        logits[self.vocab.eot + 1:] = -np.inf   # sot, language, task and timestamp tokens
        logits[self.vocab.suppress] = -np.inf
        if first:
            logits[self.vocab.suppress_first] = -np.inf
        return logits - logsumexp(logits)


class StepDecoder:
    """The static-shape step graph (compiled backends) behind CachedDecoder's `feed`: one token per call,
    the caches held here and passed in whole."""

    def __init__(self, step: Graph, dims, cross):
        self.step, self.cross = step, cross
        self.keys = np.zeros((dims.decoder_layers, dims.heads, CACHE_LEN, dims.head_dim), np.float32)
        self.values = np.zeros_like(self.keys)

    def feed(self, tokens: list[int], start: int, rows: int = 1) -> np.ndarray:
        out = []
        for pos, token in enumerate(tokens, start):
            logits, k, v = self.step(np.array([[token]]), np.array([pos]), self.keys, self.values, *self.cross)
            self.keys[:, :, pos], self.values[:, :, pos] = k[:, :, 0], v[:, :, 0]
            out.append(logits[0])
        return np.stack(out[-rows:])


class SambaApp:
    """`app(audio_16k) -> text` with Samba-ASR. With `beam` and `scorer` (the decoder), CTC prefix beam search with
    the decoder's scores added; without, the best path.

    graph: audio -> CTC log-probabilities and encoder states. `max_hops` None: the graph takes (1, samples) of any
    length (eager). Else a compiled SambaFramedGraph, (1, hops, HOP) for min_hops..max_hops hops: with a dynamic
    length (min_hops MIN_HOPS) each utterance is zero-padded to the next hop (and to 0.5 s), never to the window;
    a static graph (min_hops = max_hops) takes the window, which audio is padded to. Longer audio is cut to
    max_hops."""

    def __init__(self, graph: Graph, window: int, max_hops: int | None = None, beam: BeamOptions | None = None,
                 scorer: Scorer | None = None, min_hops: int = MIN_HOPS):
        self.graph, self.window, self.max_hops, self.beam, self.scorer = graph, window, max_hops, beam, scorer
        self.min_hops = min_hops

    def warm_up(self) -> SambaApp:
        self(np.zeros(SAMPLE_RATE, np.float32))
        return self

    def __call__(self, audio: np.ndarray, draft: str = "") -> str:
        """`draft` is accepted for the live streamer's sake and not needed: CTC decoding is one pass."""
        frames = max((len(audio) // HOP + 1) // SUBSAMPLE, 1)
        if self.max_hops is None:
            x = audio[None].astype(np.float32)
        else:
            x = frame_audio(audio, self.max_hops, self.min_hops)
        log_probs, encoded = self.graph(x)
        if self.beam is None:
            return greedy_ctc(log_probs[0, :frames])
        # the encoder is causal: its states for the audio are the same with or without the padding after it
        return beam_search(log_probs[0, :frames], self.scorer, encoded[:, :frames], self.beam)


def compression_ratio(text: str) -> float:
    """Text bytes over gzip-compressed bytes: a loop repeating a phrase compresses well (> 2.4)."""
    raw = text.encode()
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def _softmax(x: np.ndarray) -> np.ndarray:
    p = np.exp(x - x.max())
    return p / p.sum()
