"""The ASR graphs edgekit compiles: Whisper tiny.en's encoder (raw audio -> cross-attention keys/values; static, 1500
positions for 30 s) and one KV-cached decoder step (whisper.py, app.py); Samba-ASR's encoder with its CTC head
(samba.py: audio in hops of 160 samples, (1, hops, 160), so that its length can be dynamic:
`edgekit compile --model asr.samba_ctc --dynamic 'input0:1=hops:50..3000'`, see samba.dynamic_range) and one
decoder step for a beam of hypotheses (samba_decoder.py)."""
from __future__ import annotations

import torch

from edgekit.apps.spec import CompileSpec, Tolerance
from edgekit.errors import EdgekitError

from .common import CACHE_LEN, VERIFY_TOLERANCE, default_model_dir
from .convert_ct2 import load_whisper
from .ctc_beam import BeamOptions
from .features import HOP, SAMPLE_RATE, WINDOW_SECONDS
from .samba import SambaFramedGraph, load
from .samba_decoder import SambaDecoderStep, step_inputs
from .whisper import WhisperDecoderStep, WhisperEncoder, example_inputs


def compile_models(window: int = WINDOW_SECONDS) -> dict:
    """`edgekit compile --model asr.NAME`: {name: builder() -> CompileSpec}."""
    tolerance = Tolerance(**VERIFY_TOLERANCE)

    def build(part: str) -> CompileSpec:
        whisper = load_whisper(default_model_dir())
        inputs = example_inputs(whisper.dims, CACHE_LEN, window * SAMPLE_RATE)
        if part == "encoder":
            return CompileSpec(WhisperEncoder(whisper).eval(), inputs.encoder, tolerance)
        return CompileSpec(WhisperDecoderStep(whisper, CACHE_LEN).eval(), inputs.decoder, tolerance)

    def samba() -> CompileSpec:
        # The audio in hops (SambaFramedGraph): compiled with --dynamic samba.dynamic_range(window), every length
        # from 0.5 s to the window in steps of 10 ms; without it, the window's length only. The chunked scan's
        # float32 sums differ from the kernel's by ~1e-5 relative.
        audio = 0.1 * torch.randn(1, window * SAMPLE_RATE // HOP, HOP, generator=torch.Generator().manual_seed(0))
        return CompileSpec(SambaFramedGraph(load()).eval(), (audio,), Tolerance(atol=1e-3, rtol=1e-3))

    def samba_decoder_step() -> CompileSpec:
        model = load()
        if model.decoder is None:
            raise EdgekitError("these Samba-ASR weights have no decoder. Train one with `make train-asr`.")
        batch = BeamOptions(**model.meta.get("beam", {})).beam  # one row per beam hypothesis
        inputs = step_inputs(model.decoder, batch, torch.Generator().manual_seed(0))
        return CompileSpec(SambaDecoderStep(model.decoder).eval(), inputs, tolerance)

    return {"whisper_encoder": lambda: build("encoder"), "whisper_decoder_step": lambda: build("decoder"),
            "samba_ctc": samba, "samba_decoder_step": samba_decoder_step}
