"""Whisper tiny.en as edgekit compiles it: the encoder (raw audio -> cross-attention keys/values) and one
KV-cached decoder step, both with static shapes (see whisper.py and recognizer.py)."""
from __future__ import annotations

import torch

from .convert_ct2 import load_whisper
from .features import SAMPLE_RATE, WINDOW_SECONDS
from .recognizer import CACHE_LEN, default_model_dir
from .whisper import WhisperDecoderStep, WhisperEncoder, example_inputs

# Float32 sums over 1500 audio frames round differently per backend; outputs are O(1).
VERIFY_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}


def compile_models(window: int = WINDOW_SECONDS) -> dict:
    """`edgekit compile --model asr.NAME`: {name: builder() -> (module, example_inputs, compile options)}."""
    def build(part: str):
        whisper = load_whisper(default_model_dir())
        inputs = example_inputs(whisper.dims, CACHE_LEN, window * SAMPLE_RATE)
        if part == "encoder":
            return WhisperEncoder(whisper).eval(), inputs.encoder, VERIFY_TOLERANCE
        return WhisperDecoderStep(whisper, CACHE_LEN).eval(), inputs.decoder, VERIFY_TOLERANCE

    def samba():
        from .samba import SambaGraph, load

        # The chunked scan's float32 sums differ from the kernel's by ~1e-5 relative
        audio = 0.1 * torch.randn(1, window * SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
        return SambaGraph(load()).eval(), (audio,), {"atol": 1e-3, "rtol": 1e-3}

    return {"whisper_encoder": lambda: build("encoder"), "whisper_decoder_step": lambda: build("decoder"),
            "samba_ctc": samba}
