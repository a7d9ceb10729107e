"""Samba-ASR, small: a Mamba encoder over log-mel features with a CTC head spelling characters.

The paper's encoder (Shakhadri et al. 2025): log-mel features, a convolutional front end, stacked Mamba blocks.
Every block is causal (a causal depthwise convolution and the selective scan), and the front end normalises
the log-mel by a fixed floor instead of Whisper's per-clip peak, so the model can run on a stream.
The paper's Mamba decoder with its cross-connection is not built yet: the CTC head is the first step that fits
this machine's training budget.

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

from .features import HOP, N_FFT, LogMel

ALPHABET = " 'abcdefghijklmnopqrstuvwxyz"  # index 0 is the CTC blank, so labels are 1 + position
WEIGHTS = Path(__file__).with_name("weights") / "samba_ctc.pt"
SUBSAMPLE = 4  # 100 log-mel frames/s -> 25 encoder frames/s: 1.5-2 frames a character at 170 words/min


@dataclass(frozen=True)
class SambaDims:
    n_mels: int = 80
    width: int = 96
    layers: int = 4
    d_state: int = 8


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


class SambaCTC(nn.Module):
    """features (batch, frames, n_mels) -> CTC log-probabilities (batch, frames / SUBSAMPLE, 1 + len(ALPHABET))."""

    def __init__(self, dims: SambaDims = SambaDims(), scan=None):
        super().__init__()
        from edgekit.kernels.scan.decomposed import chunked_scan

        self.dims = dims
        self.encoder = SambaEncoder(dims, scan or chunked_scan)
        self.head = nn.Linear(dims.width, 1 + len(ALPHABET))

    def set_scan(self, scan) -> SambaCTC:
        for block in self.encoder.blocks:
            block.scan = scan
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(self.encoder(features.transpose(1, 2))), dim=-1)


class SambaGraph(nn.Module):
    """The exported graph: audio (1, samples) at 16 kHz -> CTC log-probabilities (1, frames, classes)."""

    def __init__(self, model: SambaCTC):
        super().__init__()
        self.front = SambaFrontEnd(model.dims.n_mels)
        self.model = model

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(self.front(audio).transpose(1, 2))


def encode_text(text: str) -> list[int]:
    return [1 + ALPHABET.index(c) for c in text]


def greedy_ctc(log_probs: np.ndarray) -> str:
    """Best path: the most likely class per frame, repeats merged, blanks dropped."""
    best = log_probs.argmax(-1)
    keep = (best != 0) & np.concatenate([[True], best[1:] != best[:-1]])
    return " ".join("".join(ALPHABET[i - 1] for i in best[keep]).split())


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
    return model.eval()


class SambaRecognizer:
    """`recognizer(audio_16k) -> text` with Samba-ASR: eager (the edgekit scan kernel) or a compiled graph for
    `window` seconds (audio is padded to it; longer audio: see `vad.windows`)."""

    def __init__(self, weights=None, backend: str = "eager", artifacts=None, window: int = 10):
        from .features import SAMPLE_RATE
        from .recognizer import BACKENDS, DEFAULT_ARTIFACTS, compiled

        if backend not in BACKENDS:
            raise EdgekitError(f"unknown backend {backend!r}. Choose one of {', '.join(BACKENDS)}.")
        self.model, self.window = load(weights or WEIGHTS), window
        graph = SambaGraph(self.model).eval()
        if backend == "eager":
            def run(x: np.ndarray) -> list[np.ndarray]:
                with torch.inference_mode():
                    return [graph(torch.from_numpy(x)).numpy()]
            self.graph = run
        else:
            samples = window * SAMPLE_RATE
            name = f"samba-ctc-{window}s-{_fingerprint(self.model)}"
            self.graph = compiled(graph, (torch.zeros(1, samples),), name, backend,
                                  Path(artifacts) if artifacts else DEFAULT_ARTIFACTS)
        self.samples = None if backend == "eager" else window * SAMPLE_RATE

    def warm_up(self) -> SambaRecognizer:
        self(np.zeros(16000, np.float32))
        return self

    def __call__(self, audio: np.ndarray, draft: str = "") -> str:
        """`draft` is accepted for the live streamer's sake and not needed: CTC decoding is one pass."""
        from .features import pad_window

        frames = (len(audio) // HOP + 1) // SUBSAMPLE
        x = pad_window(audio, self.samples) if self.samples else audio[None].astype(np.float32)
        (log_probs,) = self.graph(x)
        return greedy_ctc(log_probs[0, :max(frames, 1)])


def _fingerprint(model: SambaCTC) -> str:
    import hashlib
    import inspect
    import sys

    digest = hashlib.sha256(inspect.getsource(sys.modules[__name__]).encode())
    for tensor in model.state_dict().values():
        digest.update(tensor.numpy().tobytes()[:4096])
    return digest.hexdigest()[:10]
