"""Samba-ASR, small: a Mamba encoder over log-mel features with a CTC head spelling characters, and a Mamba
decoder with the paper's cross-connection.

The paper's encoder (Shakhadri et al. 2025): log-mel features, a convolutional front end, stacked Mamba blocks.
Every block is causal (a causal depthwise convolution and the selective scan), and the front end normalises
the log-mel by a fixed floor instead of Whisper's per-clip peak, so the model can run on a stream.
The decoder's scan runs over the encoder states and then over the transcript's characters, so the state that
predicts a character has read the utterance (no attention). Trained on this machine's budget it is too weak to
transcribe alone; decoding is CTC beam search with its scores added (ctc_beam.py, samba_decoder.py).

The scan is `scan=`: the exportable chunked form for training (it has a backward), the edgekit kernel op
(`torch.ops.edgekit.selective_scan`) for inference, which every backend compiles.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.kernels.scan.mamba_block import MambaBlock

from .common import ALPHABET
from .features import HOP, N_FFT, SAMPLE_RATE, LogMel

WEIGHTS = Path(__file__).with_name("weights") / "samba.pt"
SUBSAMPLE = 4  # 100 log-mel frames/s -> 25 encoder frames/s: 1.5-2 frames a character at 170 words/min


@dataclass(frozen=True)
class SambaDims:
    n_mels: int = 80
    width: int = 96
    layers: int = 4
    d_state: int = 8
    decoder_layers: int = 0  # 0: CTC only, decoded by its best path
    decoder_state: int = 16


class SambaFrontEnd(LogMel):
    """Log-mel as Whisper computes it, normalised by a fixed floor (no look at the whole clip): streamable."""

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = F.pad(audio.unsqueeze(1), (N_FFT // 2, N_FFT // 2), mode="reflect")
        real, imag = F.conv1d(x, self.basis, stride=HOP)[..., :-1].chunk(2, dim=1)
        log = torch.log10(torch.clamp(self.filters @ (real * real + imag * imag), min=1e-8))
        return (log + 4.0) / 4.0


def kernel_scan(*args, **kwargs):
    """The edgekit selective-scan op (the compiled kernel in eager; each backend's form when exported)."""
    import edgekit.kernels.scan.torch_op  # noqa: F401  registers torch.ops.edgekit.selective_scan

    return torch.ops.edgekit.selective_scan(*args, **kwargs)


class CausalConv(nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class SambaBlock(MambaBlock):
    """edgekit's Mamba block, with B and C handed to the scan in the grouped layout [batch, 1, N, L]: the same
    arithmetic, and the chunked decomposition then broadcasts explicitly, which ONNX Runtime's shape inference
    accepts for batch 1 (the ungrouped [batch, N, L] form fails there with a Reshape error)."""

    def __init__(self, d_model: int, d_state: int, scan):
        super().__init__(d_model, d_state, scan=scan)
        # Mamba's time-step initialisation: softplus(bias) log-uniform in [1e-3, 1e-1], so channels start with
        # memories of 10-1000 frames (PyTorch's default bias gives softplus ~0.7: every channel forgets within a
        # frame or two).
        dt = torch.exp(torch.rand(self.dt_proj.out_features) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        length = hidden.shape[1]
        x, z = self.in_proj(self.norm(hidden)).transpose(1, 2).chunk(2, dim=1)
        x = F.silu(self.conv(x)[..., :length])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)
        y = self.scan(x, delta, -torch.exp(self.A_log), B.transpose(1, 2).unsqueeze(1).contiguous(),
                      C.transpose(1, 2).unsqueeze(1).contiguous(), D=self.D, z=z,
                      delta_bias=self.dt_proj.bias, delta_softplus=True)
        return hidden + self.out_proj(y.transpose(1, 2))

    def prefill(self, hidden: torch.Tensor) -> tuple[torch.Tensor, BlockState]:
        """`forward` over (batch, L, width) that also returns the state after the last position, for `step`."""
        from edgekit.kernels.scan.reference import parallel_scan

        length, taps = hidden.shape[1], self.conv.kernel_size[0] - 1
        x, z = self.in_proj(self.norm(hidden)).transpose(1, 2).chunk(2, dim=1)
        window = F.pad(x, (max(0, taps - length), 0))[..., -taps:]  # the conv's last inputs
        x = F.silu(self.conv(x)[..., :length])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)
        y, ssm = parallel_scan(x, delta, -torch.exp(self.A_log), B.transpose(1, 2).unsqueeze(1),
                               C.transpose(1, 2).unsqueeze(1), D=self.D, z=z, delta_bias=self.dt_proj.bias,
                               delta_softplus=True, return_last_state=True)
        return hidden + self.out_proj(y.transpose(1, 2)), (window, ssm)

    def step(self, hidden: torch.Tensor, state: BlockState) -> tuple[torch.Tensor, BlockState]:
        """One position (batch, width) after `state`: the recurrence `forward` computes for the whole sequence."""
        from edgekit.kernels.scan.reference import selective_state_update_ref

        window, ssm = state
        x, z = self.in_proj(self.norm(hidden)).chunk(2, dim=-1)
        window = torch.cat([window, x[..., None]], dim=-1)
        x = F.silu((window * self.conv.weight[:, 0]).sum(-1) + self.conv.bias)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        y, ssm = selective_state_update_ref(ssm, x, dt @ self.dt_proj.weight.T, -torch.exp(self.A_log), B, C,
                                            D=self.D, z=z, dt_bias=self.dt_proj.bias, dt_softplus=True,
                                            dtype=torch.float32)
        return hidden + self.out_proj(y), (window[..., 1:], ssm)


BlockState = tuple[torch.Tensor, torch.Tensor]  # the conv's last inputs (batch, d_inner, taps), the scan state


class SambaEncoder(nn.Module):
    """log-mel (batch, n_mels, frames) -> (batch, frames / SUBSAMPLE, width)."""

    def __init__(self, dims: SambaDims, scan):
        super().__init__()
        self.conv1 = CausalConv(dims.n_mels, dims.width, 3, stride=2)
        self.conv2 = CausalConv(dims.width, dims.width, 3, stride=SUBSAMPLE // 2)
        self.blocks = nn.ModuleList(SambaBlock(dims.width, dims.d_state, scan=scan) for _ in range(dims.layers))
        self.norm = nn.RMSNorm(dims.width)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class SambaDecoder(nn.Module):
    """The paper's Mamba decoder with its Mamba cross-connection: one causal scan runs over the projected encoder
    states and then over the transcript's tokens, so the state that predicts each character has read the whole
    utterance (the decoder state carries the encoder; no attention). Token 0 begins and ends a transcript, the
    others are the CTC head's characters."""

    def __init__(self, dims: SambaDims, scan):
        super().__init__()
        self.bridge = nn.Linear(dims.width, dims.width)
        self.embed = nn.Embedding(1 + len(ALPHABET), dims.width)
        self.blocks = nn.ModuleList(SambaBlock(dims.width, dims.decoder_state, scan=scan)
                                    for _ in range(dims.decoder_layers))
        self.norm = nn.RMSNorm(dims.width)
        self.head = nn.Linear(dims.width, 1 + len(ALPHABET))

    def forward(self, encoded: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """encoded (batch, frames, width), tokens (batch, n) starting with 0 -> next-token logits (batch, n, 29)."""
        x = torch.cat([self.bridge(encoded), self.embed(tokens)], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, encoded.shape[1]:]))

    def start(self, encoded: torch.Tensor) -> tuple[torch.Tensor, list[BlockState]]:
        """Scan the encoder states (1, frames, width) and token 0: log-probabilities of the first character
        (1, 29) and the state after them, for `advance`."""
        x = torch.cat([self.bridge(encoded), self.embed(torch.zeros(1, 1, dtype=torch.long))], dim=1)
        states = []
        for block in self.blocks:
            x, state = block.prefill(x)
            states.append(state)
        return F.log_softmax(self.head(self.norm(x[:, -1])), dim=-1), states

    def advance(self, states: list[BlockState], tokens: torch.Tensor) -> tuple[torch.Tensor, list[BlockState]]:
        """One token per hypothesis (batch,) after `states` -> next-token log-probabilities (batch, 29), states."""
        return self.step(self.embed(tokens), states)

    def step(self, x: torch.Tensor, states: list[BlockState]) -> tuple[torch.Tensor, list[BlockState]]:
        """One position already embedded (batch, width) after `states` -> next-token log-probabilities, states."""
        after = []
        for block, state in zip(self.blocks, states):
            x, state = block.step(x, state)
            after.append(state)
        return F.log_softmax(self.head(self.norm(x)), dim=-1), after

    @torch.no_grad()
    def greedy(self, encoded: torch.Tensor, max_tokens: int) -> str:
        """Most likely next character until token 0 or `max_tokens`."""
        log_probs, states = self.start(encoded)
        tokens = []
        for _ in range(max_tokens):
            nxt = int(log_probs[0].argmax())
            if nxt == 0:
                break
            tokens.append(nxt)
            log_probs, states = self.advance(states, torch.tensor([nxt]))
        return " ".join("".join(ALPHABET[i - 1] for i in tokens).split())


class SambaCTC(nn.Module):
    """features (batch, frames, n_mels) -> CTC log-probabilities (batch, frames / SUBSAMPLE, 1 + len(ALPHABET)).
    With `dims.decoder_layers`, also the Mamba decoder (`decoder`): trained jointly with the CTC head, or on a
    fixed encoder (`train_samba --init`, the shipped weights)."""

    def __init__(self, dims: SambaDims = SambaDims(), scan=None):
        super().__init__()
        from edgekit.kernels.scan.decomposed import chunked_scan

        self.dims = dims
        self.encoder = SambaEncoder(dims, scan or chunked_scan)
        self.head = nn.Linear(dims.width, 1 + len(ALPHABET))
        self.decoder = SambaDecoder(dims, scan or chunked_scan) if dims.decoder_layers else None

    def set_scan(self, scan) -> SambaCTC:
        for block in [*self.encoder.blocks, *(self.decoder.blocks if self.decoder else [])]:
            block.scan = scan
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(self.encoder(features.transpose(1, 2))), dim=-1)


class SambaGraph(nn.Module):
    """The exported graph: audio (1, samples) at 16 kHz -> CTC log-probabilities (1, frames, classes) and the
    encoder states (1, frames, width) that the decoder reads."""

    def __init__(self, model: SambaCTC):
        super().__init__()
        self.front = SambaFrontEnd(model.dims.n_mels)
        self.model = model

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.model.encoder(self.front(audio))
        return F.log_softmax(self.model.head(encoded), dim=-1), encoded


class SambaFramedGraph(SambaGraph):
    """SambaGraph over audio cut into hops: (1, hops, HOP) -> the same outputs as SambaGraph on (1, hops * HOP).

    The compiled form, with `hops` a dynamic axis (`dynamic_range`): the encoder is a Mamba scan and takes any
    length, but the log-mel frame count is samples // HOP, and torch.export cannot prove the guards that floor
    division leaves over a raw sample count; in hops the frame count is the axis itself. Callers pad audio to
    the next multiple of HOP (at most 9.9 ms), not to a window."""

    def forward(self, hops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().forward(hops.flatten(1))


MIN_HOPS = 50  # 0.5 s: the shortest audio a compiled Samba graph takes (shorter audio is zero-padded to it)


def dynamic_range(window: int) -> str:
    """compile_model's dynamic_shapes for SambaFramedGraph: 0.5 s .. `window` seconds, in hops of HOP samples."""
    return f"input0:1=hops:{MIN_HOPS}..{window * SAMPLE_RATE // HOP}"


def frame_audio(audio: np.ndarray, max_hops: int | None = None, min_hops: int = MIN_HOPS) -> np.ndarray:
    """(samples,) float audio -> (1, hops, HOP) float32 for SambaFramedGraph: zero-padded to the next multiple of
    HOP and to at least `min_hops` hops (a static graph: min_hops = max_hops); cut to `max_hops` (None: not cut)."""
    hops = max(-(-len(audio) // HOP), min_hops)
    if max_hops is not None:
        hops = min(hops, max_hops)
    out = np.zeros(hops * HOP, np.float32)
    n = min(len(audio), len(out))
    out[:n] = audio[:n]
    return out.reshape(1, hops, HOP)


def encode_text(text: str) -> list[int]:
    return [1 + ALPHABET.index(c) for c in text]


def greedy_ctc(log_probs: np.ndarray) -> str:
    """Best path: the most likely class per frame, repeats merged, blanks dropped."""
    best = log_probs.argmax(-1)
    keep = (best != 0) & np.concatenate([[True], best[1:] != best[:-1]])
    return " ".join("".join(ALPHABET[i - 1] for i in best[keep]).split())


def max_tokens_for(frames: int) -> int:
    """Decoder length cap for `frames` log-mel frames: 30 characters a second (fast speech is ~20) and a margin."""
    return frames * 30 // 100 + 10


def save(model: SambaCTC, path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"dims": asdict(model.dims), "state": model.state_dict(), "meta": meta}, tmp)
    tmp.rename(path)


def load(path: Path = WEIGHTS, scan=None) -> SambaCTC:
    """The trained model with the edgekit scan kernel op (or `scan`)."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{path}: Samba-ASR weights not found. Train them with `make train-asr`.")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = SambaCTC(SambaDims(**saved["dims"]), scan=scan or kernel_scan)
    model.load_state_dict(saved["state"])
    model.meta = saved.get("meta", {})
    return model.eval()
