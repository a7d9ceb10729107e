"""Whisper (encoder-decoder transformer) in plain torch, split into two exportable graphs with static shapes.

`WhisperEncoder`: 30 s of 16 kHz audio -> per-layer cross-attention keys/values (computed once per window).
`WhisperDecoderStep`: one token at position `offset` against fixed-size self-attention caches -> logits and the
new token's keys/values; the caller writes those into its cache, so no step copies the whole cache back out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .features import HOP, LogMel


@dataclass(frozen=True)
class Dims:
    n_mels: int = 80
    audio_ctx: int = 1500
    width: int = 384
    heads: int = 6
    encoder_layers: int = 4
    decoder_layers: int = 4
    vocab: int = 51864
    text_ctx: int = 448

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.view(b, t, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class Mlp(nn.Sequential):
    def __init__(self, width: int):
        super().__init__(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))


class EncoderBlock(nn.Module):
    def __init__(self, dims: Dims):
        super().__init__()
        self.heads = dims.heads
        self.attn_ln = nn.LayerNorm(dims.width)
        self.qkv = nn.Linear(dims.width, 3 * dims.width)
        self.out = nn.Linear(dims.width, dims.width)
        self.mlp_ln = nn.LayerNorm(dims.width)
        self.mlp = Mlp(dims.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(self.attn_ln(x)).chunk(3, dim=-1))
        x = x + self.out(merge_heads(F.scaled_dot_product_attention(q, k, v)))
        return x + self.mlp(self.mlp_ln(x))


class DecoderBlock(nn.Module):
    def __init__(self, dims: Dims):
        super().__init__()
        self.heads = dims.heads
        self.self_ln = nn.LayerNorm(dims.width)
        self.self_qkv = nn.Linear(dims.width, 3 * dims.width)
        self.self_out = nn.Linear(dims.width, dims.width)
        self.cross_ln = nn.LayerNorm(dims.width)
        self.cross_q = nn.Linear(dims.width, dims.width)
        self.cross_kv = nn.Linear(dims.width, 2 * dims.width)
        self.cross_out = nn.Linear(dims.width, dims.width)
        self.mlp_ln = nn.LayerNorm(dims.width)
        self.mlp = Mlp(dims.width)

    def cross_keys_values(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.cross_kv(audio).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, x, self_k, self_v, slot, visible, cross_k, cross_v):
        """x: (1, 1, C) at cache slot `slot` (one-hot over the cache); `visible` (additive) hides unwritten slots."""
        q, k, v = (split_heads(t, self.heads) for t in self.self_qkv(self.self_ln(x)).chunk(3, dim=-1))
        keys = torch.where(slot, k, self_k)  # the new token's entry, without writing the input cache
        values = torch.where(slot, v, self_v)
        x = x + self.self_out(merge_heads(F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)))
        q = split_heads(self.cross_q(self.cross_ln(x)), self.heads)
        x = x + self.cross_out(merge_heads(F.scaled_dot_product_attention(q, cross_k, cross_v)))
        return x + self.mlp(self.mlp_ln(x)), k, v


class Whisper(nn.Module):
    """Parameter container with the reference (non-exported) full forward used for checks."""

    def __init__(self, dims: Dims = Dims()):
        super().__init__()
        self.dims = dims
        self.conv1 = nn.Conv1d(dims.n_mels, dims.width, 3, padding=1)
        self.conv2 = nn.Conv1d(dims.width, dims.width, 3, stride=2, padding=1)
        self.register_buffer("audio_pos", torch.zeros(dims.audio_ctx, dims.width))
        self.encoder_blocks = nn.ModuleList(EncoderBlock(dims) for _ in range(dims.encoder_layers))
        self.encoder_ln = nn.LayerNorm(dims.width)
        self.token_embedding = nn.Embedding(dims.vocab, dims.width)
        self.text_pos = nn.Parameter(torch.zeros(dims.text_ctx, dims.width))
        self.decoder_blocks = nn.ModuleList(DecoderBlock(dims) for _ in range(dims.decoder_layers))
        self.decoder_ln = nn.LayerNorm(dims.width)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        x = x + self.audio_pos[: x.shape[1]]
        for block in self.encoder_blocks:
            x = block(x)
        return self.encoder_ln(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder_ln(x) @ self.token_embedding.weight.T


class WhisperEncoder(nn.Module):
    """audio (1, samples) float32 at 16 kHz -> cross keys, cross values, each (layers, heads, samples / 320,
    head_dim); 30 s (1500 frames) is what Whisper was trained on."""

    def __init__(self, whisper: Whisper):
        super().__init__()
        self.mel = LogMel(whisper.dims.n_mels)
        self.whisper = whisper

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.whisper.encode(self.mel(audio))
        pairs = [block.cross_keys_values(x) for block in self.whisper.decoder_blocks]
        return torch.cat([k for k, _ in pairs]), torch.cat([v for _, v in pairs])


class WhisperDecoderStep(nn.Module):
    """(token (1, 1) int64, offset (1,) int64, self keys, self values (layers, heads, cache, head_dim),
    cross keys, cross values) -> (logits (1, vocab), new keys, new values (layers, heads, 1, head_dim))."""

    def __init__(self, whisper: Whisper, cache_len: int):
        super().__init__()
        self.whisper = whisper
        self.register_buffer("slots", torch.arange(cache_len))

    def forward(self, token, offset, self_k, self_v, cross_k, cross_v):
        w = self.whisper
        x = w.token_embedding(token) + w.text_pos.index_select(0, offset)
        slot = (self.slots == offset).view(1, 1, -1, 1)
        # An additive float mask: edgekit's TVM attention lowering takes no boolean masks.
        visible = torch.where(self.slots <= offset, 0.0, -1e9).view(1, 1, 1, -1)
        new_k, new_v = [], []
        for i, block in enumerate(w.decoder_blocks):
            x, k, v = block(x, self_k[i:i + 1], self_v[i:i + 1], slot, visible, cross_k[i:i + 1], cross_v[i:i + 1])
            new_k.append(k)
            new_v.append(v)
        # flatten, not [:, -1]: TVM's import of a negative index on this size-1 axis yields NaN
        return w.logits(x).flatten(1), torch.cat(new_k), torch.cat(new_v)


@dataclass
class ExampleInputs:
    encoder: tuple[torch.Tensor, ...]
    decoder: tuple[torch.Tensor, ...]


def example_inputs(dims: Dims, cache_len: int, samples: int) -> ExampleInputs:
    """Inputs fixing the exported shapes; `samples` shorter than 30 s shrinks the encoder's context, as
    whisper.cpp's --audio-ctx does, trading some accuracy for speed."""
    cache = torch.zeros(dims.decoder_layers, dims.heads, cache_len, dims.head_dim)
    cross = torch.zeros(dims.decoder_layers, dims.heads, samples // HOP // 2, dims.head_dim)
    return ExampleInputs(encoder=(torch.zeros(1, samples),),
                         decoder=(torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64),
                                  cache, cache.clone(), cross, cross.clone()))
