"""Whisper (encoder-decoder transformer) in plain torch, split into two exportable graphs with static shapes.

`WhisperEncoder`: 30 s of 16 kHz audio -> per-layer cross-attention keys/values (computed once per window).
`WhisperDecoderStep`: one token at position `offset` against fixed-size self-attention caches -> logits and the
new token's keys/values; the caller writes those into its cache, so no step copies the whole cache back out.
`CachedDecoder`: the eager decoder, any number of tokens per call against a KV cache that grows in place, with
edgekit's fused attention kernel (causal, bottom-right aligned: new tokens see the cache and each other).

Attention runs through `attend`: eagerly on float32 CPU tensors it is the edgekit kernel; inside an export it
stays torch's scaled_dot_product_attention, which TVM compiles to the same kernel and the others decompose.
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


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v on (batch, heads, length, head_dim); causal: bottom-right aligned."""
    if not torch.compiler.is_exporting() and q.dtype == torch.float32 and q.device.type == "cpu":
        from edgekit.kernels import attention

        return attention(q, k, v, causal=causal)
    if causal and q.shape[2] > 1:  # torch's is_causal aligns top-left; spell the bottom-right mask out
        lq, lk = q.shape[2], k.shape[2]
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v)


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
        x = x + self.out(merge_heads(attend(q, k, v)))
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
        return self._cross_and_mlp(x, cross_k, cross_v), k, v

    def _cross_and_mlp(self, x, cross_k, cross_v):
        q = split_heads(self.cross_q(self.cross_ln(x)), self.heads)
        x = x + self.cross_out(merge_heads(attend(q, cross_k, cross_v)))
        return x + self.mlp(self.mlp_ln(x))

    def forward_cached(self, x, cache_k, cache_v, start, cross_k, cross_v):
        """x: (1, n, C) at positions start..start+n-1; writes their keys/values into the caches (1, H, L, D)."""
        n = x.shape[1]
        q, k, v = (split_heads(t, self.heads) for t in self.self_qkv(self.self_ln(x)).chunk(3, dim=-1))
        cache_k[:, :, start:start + n] = k
        cache_v[:, :, start:start + n] = v
        a = attend(q, cache_k[:, :, :start + n], cache_v[:, :, :start + n], causal=True)
        return self._cross_and_mlp(x + self.self_out(merge_heads(a)), cross_k, cross_v)


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


class CachedDecoder:
    """Eager decoding: `feed(tokens, start)` runs tokens at positions start.. through the decoder, keeping their
    keys/values; positions after `start` left by an earlier call are overwritten (a rejected draft costs nothing
    to undo). Returns the logits of the last `rows` tokens."""

    def __init__(self, whisper: Whisper, cross: tuple[torch.Tensor, torch.Tensor], cache_len: int):
        d = whisper.dims
        self.whisper, self.cache_len = whisper, cache_len
        self.keys = torch.zeros(d.decoder_layers, 1, d.heads, cache_len, d.head_dim)
        self.values = torch.zeros_like(self.keys)
        self.cross_k, self.cross_v = cross

    @torch.inference_mode()
    def feed(self, tokens: list[int], start: int, rows: int = 1) -> torch.Tensor:
        if start + len(tokens) > self.cache_len:
            raise ValueError(f"{start + len(tokens)} tokens exceed the decoder cache of {self.cache_len}.")
        w = self.whisper
        x = w.token_embedding(torch.tensor([tokens])) + w.text_pos[start:start + len(tokens)]
        for i, block in enumerate(w.decoder_blocks):
            x = block.forward_cached(x, self.keys[i], self.values[i], start,
                                     self.cross_k[i:i + 1], self.cross_v[i:i + 1])
        return w.logits(x[0, -rows:])


@dataclass
class ExampleInputs:
    encoder: tuple[torch.Tensor, ...]
    decoder: tuple[torch.Tensor, ...]


def example_inputs(dims: Dims, cache_len: int, samples: int) -> ExampleInputs:
    """Inputs fixing the exported shapes; `samples` shorter than 30 s shrinks the encoder's context, as
    whisper.cpp's --audio-ctx does, trading some accuracy for speed. Seeded noise rather than zeros, so the
    compile-time check against eager exercises every path (silence gives a constant log-mel)."""
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(dims.decoder_layers, dims.heads, cache_len, dims.head_dim, generator=g)
    cross = torch.randn(dims.decoder_layers, dims.heads, samples // HOP // 2, dims.head_dim, generator=g)
    return ExampleInputs(encoder=(0.1 * torch.randn(1, samples, generator=g),),
                         decoder=(torch.tensor([[440]]), torch.tensor([5]), cache, cache.clone(), cross, cross.clone()))
