"""The recognisers: weights loaded, graphs eager or compiled (the compiled-model cache), handed to the pipelines of
app.py. `WhisperRecognizer` (Whisper tiny.en: tokenizer, encoder, KV-cached decoder) and `SambaRecognizer`."""
from __future__ import annotations

from pathlib import Path

import torch

from edgekit.apps.runners import check_backend, runner
from edgekit.errors import EdgekitError

from .app import SambaApp, StepDecoder, Vocabulary, WhisperApp
from .common import BACKENDS, CACHE_LEN, VERIFY_TOLERANCE, Graph, default_model_dir, graph
from .convert_ct2 import load_whisper
from .ctc_beam import BeamOptions
from .features import HOP, SAMPLE_RATE, WINDOW_SECONDS
from .samba import MIN_HOPS, WEIGHTS, SambaFramedGraph, SambaGraph, dynamic_range, load
from .samba_decoder import decoder_scorer
from .whisper import CachedDecoder, Whisper, WhisperDecoderStep, WhisperEncoder, example_inputs

__all__ = ["BACKENDS", "CACHE_LEN", "SambaRecognizer", "StepDecoder", "WhisperRecognizer", "default_model_dir",
           "graphs", "samba_graph"]


class WhisperRecognizer(WhisperApp):
    """`recognizer(audio_16k) -> text` for up to `window` seconds of audio (longer audio: see `vad.windows`)."""

    def __init__(self, model_dir=None, backend: str = "eager", artifacts=None, window: int = WINDOW_SECONDS,
                 quantize: str | None = None):
        check_backend(backend)
        if quantize and backend == "eager":
            raise EdgekitError(f"--quantize {quantize} compiles integer kernels; add --backend onnxruntime or "
                               "executorch (eager runs the float PyTorch model).")
        if not 1 <= window <= WINDOW_SECONDS:
            raise EdgekitError(f"window {window} s: Whisper windows are 1 to {WINDOW_SECONDS} s.")
        model_dir = Path(model_dir) if model_dir else default_model_dir()
        whisper = load_whisper(model_dir)
        self.whisper, self.backend, self.dims = whisper, backend, whisper.dims
        encoder, self.step = graphs(whisper, backend, artifacts, window * SAMPLE_RATE, quantize)
        super().__init__(encoder, self._eager_decoder if backend == "eager" else self._step_decoder,
                         Vocabulary.from_dir(model_dir), window)

    def _eager_decoder(self, cross) -> CachedDecoder:
        """The eager KV-cached decoder: several tokens a call, the cache written in place."""
        return CachedDecoder(self.whisper, tuple(torch.from_numpy(c) for c in cross), CACHE_LEN)

    def _step_decoder(self, cross) -> StepDecoder:
        """The compiled one-token step graph driven token by token."""
        return StepDecoder(self.step, self.dims, cross)


def graphs(whisper: Whisper, backend: str, artifacts, samples: int,
           quantize: str | None = None) -> tuple[Graph, Graph]:
    """(encoder, decoder step) for `samples`-long windows as numpy-in, numpy-out callables on `backend`
    (quantize: a key of common.QUANTIZE)."""
    inputs = example_inputs(whisper.dims, CACHE_LEN, samples)
    seconds = samples // SAMPLE_RATE
    return (graph(WhisperEncoder(whisper).eval(), inputs.encoder, f"whisper-tiny.en-encoder-{seconds}s", backend,
                  artifacts, quantize),
            graph(WhisperDecoderStep(whisper, CACHE_LEN).eval(), inputs.decoder,
                  f"whisper-tiny.en-decoder-step-{seconds}s", backend, artifacts, quantize))


class SambaRecognizer(SambaApp):
    """`recognizer(audio_16k) -> text` with Samba-ASR: eager (the edgekit scan kernel, any length) or a compiled
    graph: one artifact with a dynamic length, 0.5 s to `window` seconds, so each utterance runs at its own length,
    padded only to the next 10 ms hop. Longer audio is cut to the window (see `vad.windows`)."""

    def __init__(self, weights=None, backend: str = "eager", artifacts=None, window: int = 10):
        check_backend(backend)
        if window < 1:
            raise EdgekitError(f"window {window} s: Samba windows are 1 s or longer. Pass --window 1 or more.")
        self.model = load(weights or WEIGHTS)
        max_hops, min_hops = window * SAMPLE_RATE // HOP, MIN_HOPS
        if backend == "eager":
            ctc, max_hops = graph(SambaGraph(self.model).eval(), (torch.zeros(1, window * SAMPLE_RATE),),
                                  f"samba-ctc-{window}s", backend, artifacts), None
        else:
            ctc = samba_graph(self.model, backend, artifacts, window)
        # With a decoder: CTC beam search with its scores added, the settings training chose (ctc_beam.py).
        beam = scorer = None
        if self.model.decoder is not None:
            beam = BeamOptions(**self.model.meta.get("beam", {}))
            scorer = decoder_scorer(self.model, backend, artifacts, beam.beam)
        super().__init__(ctc, window, max_hops, beam, scorer, min_hops)


def samba_graph(model, backend: str, artifacts, window: int) -> Graph:
    """The compiled Samba graph (SambaFramedGraph) up to `window` s as a numpy callable on `backend`: one artifact for
    0.5 s .. `window` s (samba.dynamic_range; verified at its shortest, an odd and its longest length). ExecuTorch
    takes the dynamic length through edgekit's native scan kernel (its XNNPACK delegate cannot take the chunked
    decomposition's reshapes with two dynamic dimensions)."""
    example = (torch.zeros(1, window * SAMPLE_RATE // HOP, HOP),)
    return runner(SambaFramedGraph(model).eval(), example, f"samba-ctc-dyn-{window}s", backend,
                  cache_dir=artifacts, progress=True, dynamic_shapes=dynamic_range(window), **VERIFY_TOLERANCE)
