"""The ASR graphs edgekit compiles, all with static shapes: Whisper tiny.en's encoder (raw audio -> cross-attention
keys/values) and one KV-cached decoder step (whisper.py, recognizer.py); Samba-ASR's encoder with its CTC head
(samba.py) and one decoder step for a beam of hypotheses (samba_decoder.py)."""
from __future__ import annotations

import torch

from edgekit.errors import EdgekitError

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

    def samba_decoder_step():
        from .ctc_beam import BeamOptions
        from .samba import load
        from .samba_decoder import SambaDecoderStep, step_inputs

        model = load()
        if model.decoder is None:
            raise EdgekitError("these Samba-ASR weights have no decoder. Train one with `make train-asr`.")
        batch = BeamOptions(**model.meta.get("beam", {})).beam  # one row per beam hypothesis
        inputs = step_inputs(model.decoder, batch, torch.Generator().manual_seed(0))
        return SambaDecoderStep(model.decoder).eval(), inputs, VERIFY_TOLERANCE

    return {"whisper_encoder": lambda: build("encoder"), "whisper_decoder_step": lambda: build("decoder"),
            "samba_ctc": samba, "samba_decoder_step": samba_decoder_step}
