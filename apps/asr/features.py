"""Audio front end: WAV reading, resampling to 16 kHz, and Whisper's log-mel spectrogram as an exportable module."""
from __future__ import annotations

import sys
import warnings
from math import gcd
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.io import wavfile
from scipy.signal import resample_poly
from torch import nn

from edgekit.errors import EdgekitError

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
WINDOW_SECONDS = 30
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
MIN_RATE, MAX_RATE = 1000, 768000  # WAV sample rates accepted (Hz)


def load_audio(path) -> np.ndarray:
    """Mono float32 in [-1, 1] at 16 kHz from a WAV file of any rate, sample format and channel count."""
    path = Path(path)
    from edgekit.apps.media import check_audio

    check_audio(path)  # the header's length before decoding (--max-seconds)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", wavfile.WavFileWarning)
            rate, data = wavfile.read(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise EdgekitError(f"{path}: audio file not found. Pass a .wav file.") from None
    except PermissionError:
        raise EdgekitError(f"{path}: permission denied. Make the file readable (chmod a+r) or copy it somewhere "
                           "this user can read.") from None
    except Exception as exc:  # noqa: BLE001 - scipy's parser fails on hostile headers with anything from
        # ValueError to TypeError or ZeroDivisionError (found by fuzzing); the file is its only input
        raise EdgekitError(f"{path}: not a readable WAV file ({exc or type(exc).__name__}). Convert it, e.g. "
                           "`ffmpeg -i in.mp3 -ar 16000 -ac 1 out.wav`.") from None
    for warning in caught:  # e.g. a file cut short: its audio is used, and the user told in one line
        print(f"warning: {path}: {warning.message}", file=sys.stderr)
    if not MIN_RATE <= rate <= MAX_RATE or data.ndim not in (1, 2) or 0 in data.shape[1:]:
        raise EdgekitError(f"{path}: unsupported WAV layout ({rate} Hz, shape {data.shape}): expected "
                           f"{MIN_RATE}-{MAX_RATE} Hz and at least one channel. Convert it, e.g. "
                           "`ffmpeg -i in.wav -ar 16000 -ac 1 out.wav`.")
    return resample(to_float(data), rate)


def to_float(data: np.ndarray) -> np.ndarray:
    if data.dtype.kind == "i":
        data = data / float(-np.iinfo(data.dtype).min)
    elif data.dtype == np.uint8:
        data = (data.astype(np.float32) - 128) / 128
    return (data.mean(axis=1) if data.ndim == 2 else data).astype(np.float32)


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return audio.astype(np.float32)
    g = gcd(rate, SAMPLE_RATE)
    return resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)


def pad_window(audio: np.ndarray, samples: int = WINDOW_SAMPLES) -> np.ndarray:
    """Zero-pad (or cut) to the model's fixed input length, as Whisper pads every window to 30 s."""
    out = np.zeros((1, samples), np.float32)
    n = min(len(audio), samples)
    out[0, :n] = audio[:n]
    return out


def mel_filters(n_mels: int, n_fft: int = N_FFT, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney-style mel filterbank (librosa's default, which Whisper's filters were made with): (n_mels, bins)."""
    def hz_to_mel(f):
        f = np.asarray(f, np.float64)
        return np.where(f < 1000, 3 * f / 200, 15 + np.log(np.maximum(f, 1e-9) / 1000) * 27 / np.log(6.4))

    def mel_to_hz(m):
        return np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))

    edges = mel_to_hz(np.linspace(0, hz_to_mel(rate / 2), n_mels + 2))
    bins = np.linspace(0, rate / 2, n_fft // 2 + 1)
    rising = (bins[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / np.diff(edges)[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling))
    return (weights * (2 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)


class LogMel(nn.Module):
    """(1, samples) audio -> (1, n_mels, samples // HOP) log-mel, Whisper's normalisation. The STFT is a strided
    convolution with a windowed DFT basis so that every backend can compile it (no complex tensors)."""

    def __init__(self, n_mels: int = 80):
        super().__init__()
        window = torch.hann_window(N_FFT, dtype=torch.float64)
        angle = 2 * torch.pi * torch.outer(torch.arange(N_FFT // 2 + 1, dtype=torch.float64),
                                           torch.arange(N_FFT, dtype=torch.float64)) / N_FFT
        basis = torch.cat([torch.cos(angle), torch.sin(angle)]) * window
        # Persistent: ExecuTorch's exporter rejects non-persistent buffers.
        self.register_buffer("basis", basis.float().unsqueeze(1))
        self.register_buffer("filters", torch.from_numpy(mel_filters(n_mels)))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = F.pad(audio.unsqueeze(1), (N_FFT // 2, N_FFT // 2), mode="reflect")
        real, imag = F.conv1d(x, self.basis, stride=HOP)[..., :-1].chunk(2, dim=1)  # Whisper drops the last frame
        mel = self.filters @ (real * real + imag * imag)
        log = torch.log10(torch.clamp(mel, min=1e-10))
        peak = log.max(dim=2, keepdim=True).values.max(dim=1, keepdim=True).values  # per clip, as Whisper does
        log = torch.maximum(log, peak - 8.0)
        return (log + 4.0) / 4.0
