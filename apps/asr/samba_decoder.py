"""Running Samba-ASR's Mamba decoder for beam search: eagerly, or as one compiled step graph.

The decoder reads the encoder states and then the transcript's characters through the same recurrent state
(the cross-connection). A scorer gives beam search (ctc_beam.py) the next-character log-probabilities after the
encoder states (`start`) and after one more character per hypothesis (`advance`); its per-hypothesis state is
opaque to the search.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import ALPHABET, graph
from .samba import SambaDecoder

NO_TOKEN = 1 + len(ALPHABET)  # the step graph's token for "this position is an encoder state, not a character"


class EagerScorer:
    """PyTorch: the encoder states in one parallel scan, then a batched recurrent step per character."""

    def __init__(self, decoder: SambaDecoder):
        self.decoder = decoder

    def start(self, encoded: np.ndarray) -> tuple[np.ndarray, list]:
        with torch.inference_mode():
            log_probs, states = self.decoder.start(torch.from_numpy(encoded))
        return log_probs[0].numpy(), states

    def advance(self, states: list, tokens: list[int]) -> tuple[np.ndarray, list]:
        batched = [tuple(torch.cat([s[layer][part] for s in states]) for part in range(2))
                   for layer in range(len(states[0]))]
        with torch.inference_mode():
            log_probs, after = self.decoder.advance(batched, torch.tensor(tokens))
        return log_probs.numpy(), [[tuple(part[row:row + 1] for part in layer) for layer in after]
                                   for row in range(len(tokens))]


class SambaDecoderStep(nn.Module):
    """The exported decoder: one position for `batch` hypotheses. Inputs: frame (batch, width), read where token
    is NO_TOKEN; token (batch,) int64; per layer the conv window and scan state. Outputs: next-character
    log-probabilities (batch, 29) and the layers' states after the position."""

    def __init__(self, decoder: SambaDecoder):
        super().__init__()
        self.decoder = decoder
        # NO_TOKEN embeds to zeros, so a frame position adds nothing from the token table
        self.register_buffer("table", torch.cat([decoder.embed.weight.detach(),
                                                 decoder.embed.weight.new_zeros(1, decoder.embed.embedding_dim)]))

    def forward(self, frame: torch.Tensor, token: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        is_frame = (token == NO_TOKEN).to(frame.dtype)[:, None]
        x = self.decoder.bridge(frame) * is_frame + F.embedding(token, self.table)
        log_probs, after = self.decoder.step(x, list(zip(states[0::2], states[1::2])))
        return (log_probs, *(tensor for layer in after for tensor in layer))


def step_inputs(decoder: SambaDecoder, batch: int, generator: torch.Generator | None = None) -> tuple:
    """Example inputs of the step graph: random frames and states, half the rows characters."""
    width = decoder.embed.embedding_dim
    token = torch.randint(0, NO_TOKEN + 1, (batch,), generator=generator)
    token[::2] = NO_TOKEN
    states = []
    for block in decoder.blocks:
        d_inner = block.conv.in_channels
        states += [torch.randn(batch, d_inner, block.conv.kernel_size[0] - 1, generator=generator),
                   0.1 * torch.randn(batch, d_inner, block.d_state, generator=generator)]
    return (torch.randn(batch, width, generator=generator), token, *states)


class CompiledScorer:
    """A compiled SambaDecoderStep of `batch` rows (the beam): the encoder states go through it one position at a
    time, then the characters, hypotheses padded to the batch."""

    def __init__(self, step, decoder: SambaDecoder, batch: int):
        self.step, self.batch = step, batch
        self.zero_states = [np.zeros(s.shape[1:], np.float32) for s in step_inputs(decoder, 1)[2:]]
        self.width = decoder.embed.embedding_dim

    def _run(self, frames: np.ndarray, tokens: list[int], states: list[list[np.ndarray]]):
        n = len(tokens)
        pad = self.batch - n
        token = np.array(tokens + [NO_TOKEN] * pad, np.int64)
        frame = np.concatenate([frames, np.zeros((pad, self.width), np.float32)])
        stacked = [np.stack([s[i] for s in states] + [zero] * pad) for i, zero in enumerate(self.zero_states)]
        log_probs, *after = self.step(frame, token, *stacked)
        return log_probs[:n], [[a[row] for a in after] for row in range(n)]

    def start(self, encoded: np.ndarray) -> tuple[np.ndarray, list]:
        states = [list(self.zero_states)]
        for frame in encoded[0]:
            _, states = self._run(frame[None], [NO_TOKEN], states)
        log_probs, states = self._run(np.zeros((1, self.width), np.float32), [0], states)
        return log_probs[0], states[0]

    def advance(self, states: list, tokens: list[int]) -> tuple[np.ndarray, list]:
        out, after = [], []
        for i in range(0, len(tokens), self.batch):
            chunk = tokens[i:i + self.batch]
            log_probs, s = self._run(np.zeros((len(chunk), self.width), np.float32), chunk, states[i:i + self.batch])
            out.append(log_probs)
            after += s
        return np.concatenate(out), after


def decoder_scorer(model, backend: str, artifacts, batch: int):
    """The scorer beam search uses with `model`'s decoder on `backend` (compiled for this host on first use, into
    the compiled-model cache `artifacts`; None: edgekit.paths.artifact_cache())."""
    if backend == "eager":
        return EagerScorer(model.decoder)
    step = SambaDecoderStep(model.decoder).eval()
    inputs = step_inputs(model.decoder, batch, torch.Generator().manual_seed(0))
    return CompiledScorer(graph(step, inputs, f"samba-decoder-step-{batch}", backend, artifacts), model.decoder, batch)
