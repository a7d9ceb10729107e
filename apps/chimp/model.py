"""The two networks of the chimp app, small enough for edge devices and static-shaped for torch.export.

Detector: a shared per-frame CNN over a clip of FRAMES frames (oldest first); the newest frame's features
plus a temporal 3x3 conv over the whole clip's stacked features (the fusion), then CenterNet-style heads at
stride 4 for the newest frame: centre heatmap, box (sub-cell offset, log size) and an L2-normalised
appearance embedding. frames=1 is the same detector without the temporal branch.

BehaviorHead: multi-label behavior logits from each track's last TRACK_LEN steps, each step the detector
embedding plus box geometry (see step_features), by transformer self-attention over the steps
(F.scaled_dot_product_attention, which the TVM pipeline can route to the edgekit attention kernel).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit import paths
from edgekit.apps.spec import CompileSpec
from edgekit.errors import EdgekitError

INPUT_HW = (128, 160)   # detector input, the 5:4 shape of PAL footage such as demo.mp4
STRIDE = 4
EMBED_DIM = 32
GEOMETRY_DIM = 8
TRACK_LEN = 16
MAX_TRACKS = 8          # behavior batch: tracks per call, padded
WEIGHTS_DIR = Path(__file__).parent / "weights"
FUSED_WEIGHTS = "chimp_fused.pt"
SINGLE_WEIGHTS = "chimp_single.pt"


def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Backbone(nn.Module):
    """RGB (N, 3, H, W) -> (N, width, H/4, W/4): a stride-8 context branch upsampled onto stride 4."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.stem = nn.Sequential(conv(3, 16, 2), conv(16, width, 2), conv(width, width))
        self.context = nn.Sequential(conv(width, 32, 2), conv(32, 32, dilation=2))
        self.lateral = nn.Conv2d(32, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.stem(x)
        coarse = F.interpolate(self.lateral(self.context(fine)), scale_factor=2.0, mode="nearest")
        return fine + coarse


class Detector(nn.Module):
    def __init__(self, frames: int = 3, width: int = 24, hidden: int = 32):
        super().__init__()
        self.frames = frames
        self.backbone = Backbone(width)
        # The newest frame's features enter by a 1x1 conv: with frames=1 this is the whole detector.
        self.current = nn.Conv2d(width, hidden, 1, bias=False)
        # Temporal fusion: a 3x3 conv over the whole clip's stacked features (3x3 so it can follow an animal
        # that moved up to a cell between frames), added to the newest frame's path. Zero-initialised, so
        # training starts from the single-frame detector and the clip only adds what helps.
        self.temporal = nn.Conv2d(frames * width, hidden, 3, padding=1, bias=False) if frames > 1 else None
        if self.temporal is not None:
            nn.init.zeros_(self.temporal.weight)
        self.fuse = nn.Sequential(nn.BatchNorm2d(hidden), nn.ReLU(inplace=True), conv(hidden, hidden))
        self.heat = nn.Sequential(conv(hidden, hidden), nn.Conv2d(hidden, 1, 1))
        self.box = nn.Sequential(conv(hidden, hidden), nn.Conv2d(hidden, 4, 1))
        self.embed = nn.Sequential(conv(hidden, hidden), nn.Conv2d(hidden, EMBED_DIM, 1))
        nn.init.constant_(self.heat[-1].bias, -2.19)  # CenterNet's prior: few cells hold a centre

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """clip (1, frames, 3, H, W) in [0, 1] -> heatmap (1, 1, h, w) in [0, 1], box (1, 4, h, w) as
        (dx, dy, log w, log h) in stride units, embedding (1, EMBED_DIM, h, w) of unit length."""
        n, t, c, h, w = clip.shape
        features = self.backbone(clip.reshape(n * t, c, h, w))
        features = features.reshape(n, t, features.shape[1], features.shape[2], features.shape[3])
        mixed = self.current(features[:, -1])
        if self.temporal is not None:
            mixed = mixed + self.temporal(features.reshape(n, t * features.shape[2], *features.shape[3:]))
        fused = self.fuse(mixed)
        return torch.sigmoid(self.heat(fused)), self.box(fused), F.normalize(self.embed(fused), dim=1)


class SelfAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, dim)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class BehaviorHead(nn.Module):
    def __init__(self, classes: int, dim: int = 48, heads: int = 4, layers: int = 2):
        super().__init__()
        self.drop = nn.Dropout(0.1)  # the embedding is an identity code: keep the head from memorising tracks
        self.inp = nn.Linear(EMBED_DIM + GEOMETRY_DIM, dim)
        self.position = nn.Parameter(torch.zeros(1, TRACK_LEN, dim))
        self.blocks = nn.Sequential(*(SelfAttentionBlock(dim, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, classes)

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        """steps (N, TRACK_LEN, EMBED_DIM + GEOMETRY_DIM), oldest first -> logits (N, classes)."""
        x = self.blocks(self.inp(self.drop(steps)) + self.position)
        return self.out(self.norm(x).mean(1))


def step_features(box: np.ndarray, previous: np.ndarray, others: np.ndarray, embedding: np.ndarray,
                  frame_wh: tuple[int, int]) -> np.ndarray:
    """One BehaviorHead step for a box (x1, y1, x2, y2): its embedding, then centre and size relative to the
    frame, velocity and speed in body heights per frame (from the previous box), and the distance to the
    nearest other box in body heights (capped at 3: far is far)."""
    w, h = frame_wh
    centre, prev_centre = (box[:2] + box[2:]) / 2, (previous[:2] + previous[2:]) / 2
    height = max(float(box[3] - box[1]), 1.0)
    velocity = (centre - prev_centre) / height
    nearest = 3.0
    if len(others):
        nearest = min(3.0, float(np.linalg.norm((others[:, :2] + others[:, 2:]) / 2 - centre, axis=1).min()) / height)
    geometry = [centre[0] / w, centre[1] / h, (box[2] - box[0]) / w, (box[3] - box[1]) / h,
                velocity[0], velocity[1], float(np.linalg.norm(velocity)), nearest]
    return np.concatenate([embedding, np.asarray(geometry, np.float32)]).astype(np.float32)


@dataclass
class ChimpModel:
    detector: Detector
    behavior: BehaviorHead
    behaviors: list[str]     # label names of the behavior logits

    def example_inputs(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """Seeded random inputs of the static shapes: compile verifies artifacts on them, and zeros would leave
        most of each network's arithmetic unchecked."""
        generator = torch.Generator().manual_seed(0)
        return {"detector": (torch.rand(1, self.detector.frames, 3, *INPUT_HW, generator=generator),),
                "behavior": (torch.randn(MAX_TRACKS, TRACK_LEN, EMBED_DIM + GEOMETRY_DIM, generator=generator),)}

    def state(self, **extra) -> dict:
        return {"frames": self.detector.frames, "behaviors": self.behaviors,
                "detector": self.detector.state_dict(), "behavior": self.behavior.state_dict(), **extra}

    @classmethod
    def new(cls, frames: int, behaviors: list[str]) -> "ChimpModel":
        return cls(Detector(frames), BehaviorHead(len(behaviors)), list(behaviors))

    @classmethod
    def load(cls, path: str | Path | None = None) -> "ChimpModel":
        """Weights written by train.py; default: $EDGEKIT_WEIGHTS/chimp/chimp_fused.pt if present, else the
        small weights shipped with the app."""
        path = Path(path) if path else default_weights()
        if not path.is_file():
            raise EdgekitError(f"chimp weights {path} not found. Write them with `make train-chimp`, "
                               "or name a file for one command: `edgekit chimp run ... --weights FILE.pt`.")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = cls.new(state["frames"], state["behaviors"])
        model.detector.load_state_dict(state["detector"])
        model.behavior.load_state_dict(state["behavior"])
        model.detector.eval(), model.behavior.eval()
        return model


def default_weights(name: str = FUSED_WEIGHTS) -> Path:
    override = paths.weights("chimp", name)
    return override if override.is_file() else WEIGHTS_DIR / name



def compile_models() -> dict:
    """`edgekit compile --model chimp.NAME`: {name: builder() -> CompileSpec}."""
    def build(part: str) -> CompileSpec:
        model = ChimpModel.load()
        return CompileSpec(getattr(model, part), model.example_inputs()[part])

    return {"detector": lambda: build("detector"), "behavior": lambda: build("behavior")}
