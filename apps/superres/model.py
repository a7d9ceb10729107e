"""CFSR (ConvFormer super-resolution, Wu et al., IEEE TIP 2024) in the deployed form of the official checkpoints.

Module names mirror the authors' state_dict so CFSR_x{2,3,4}.pth load unmodified. The released weights
are already re-parameterised: the large-kernel branches are one 9x9 depthwise conv (`lkb_reparam`) and the
feed-forward's Sobel/Laplacian edge branches are folded into its 3x3 depthwise conv (`pos`), which is
exactly what the authors' ONNX exports contain.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from edgekit import paths
from edgekit.apps.spec import CompileSpec, QuantRecipe
from edgekit.errors import EdgekitError

from .quantize import int8_options

SCALES = (2, 3, 4)
CHANNELS = 48
RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, subtracted on input and added back on output


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor, written out so every exporter sees plain ops.

    The channel means are 1x1 convolutions with weights 1/C: XNNPACK has no reduction over channels, and
    `mean(1)` left 50 ops outside the ExecuTorch delegate, splitting the graph into 51 parts."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("average", torch.full((1, channels, 1, 1), 1.0 / channels), persistent=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - nn.functional.conv2d(x, self.average)
        var = nn.functional.conv2d(centred * centred, self.average)
        x = centred / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class LargeKernel(nn.Module):
    """The 9x9 depthwise mixer; `lkb_reparam` is the checkpoint's name for the fused kernel."""

    def __init__(self, channels: int, size: int = 9):
        super().__init__()
        self.lkb_reparam = nn.Conv2d(channels, channels, size, padding=size // 2, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lkb_reparam(x)


class ConvMod(nn.Module):
    """Convolutional modulation: a large-kernel gate multiplies a 1x1 value projection."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.a = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), LargeKernel(dim))
        self.v = nn.Conv2d(dim, dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.proj(self.a(x) * self.v(x))


class EdgeFeedForward(nn.Module):
    """1x1 expand, GELU, then a residual depthwise 3x3 (the folded edge-detector branches), 1x1 project."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.pos = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(self.norm(x)))
        return self.fc2(x + self.act(self.pos(x)))


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.attn = ConvMod(dim)
        self.mlp = EdgeFeedForward(dim, 2 * dim)
        self.layer_scale_1 = nn.Parameter(torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1[:, None, None] * self.attn(x)
        return x + self.layer_scale_2[:, None, None] * self.mlp(x)


class Stage(nn.Module):
    def __init__(self, dim: int, depth: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x + self.conv(x)


class CFSR(nn.Module):
    """N x 3 x H x W RGB in [0, 1] -> N x 3 x sH x sW (not clamped, like the reference)."""

    def __init__(self, scale: int = 4, dim: int = CHANNELS, depths: tuple[int, ...] = (6, 6)):
        super().__init__()
        self.scale = scale
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(3, dim, 3, padding=1)
        self.layers = nn.ModuleList(Stage(dim, d) for d in depths)
        self.norm = LayerNorm2d(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, padding=1)
        self.upsample = nn.Sequential(nn.Conv2d(dim, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.conv_first(x - self.mean)
        deep = shallow
        for stage in self.layers:
            deep = stage(deep)
        deep = self.conv_after_body(self.norm(deep)) + shallow
        return self.upsample(deep) + self.mean


def resolve_weights(weights: str | os.PathLike | None, scale: int) -> Path:
    """The given path, else $EDGEKIT_WEIGHTS/cfsr/CFSR_x{scale}.pth (edgekit.paths; a missing file is reported by
    from_pretrained, naming --weights and EDGEKIT_WEIGHTS)."""
    return Path(weights) if weights else paths.weights("cfsr", f"CFSR_x{scale}.pth")


def check_scale(scale: int) -> None:
    if scale not in SCALES:
        raise EdgekitError(f"Unsupported scale x{scale}. CFSR checkpoints exist for x2, x3 and x4.")


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise EdgekitError(f"CFSR weights not found: {path}. Point edgekit at the weights folder "
                           "(`edgekit paths --set weights=DIR`, or EDGEKIT_WEIGHTS=DIR), or name the file for one "
                           "command: `edgekit superres run ... --weights FILE`.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign files
        raise EdgekitError(f"{path} is not a readable PyTorch checkpoint ({exc}). Pass an official "
                           "CFSR_x{2,3,4}.pth file.") from exc
    state = ckpt.get("params", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "upsample.0.weight" not in state:
        raise EdgekitError(f"{path} does not hold CFSR weights (no 'upsample.0.weight'). "
                           "Pass an official CFSR_x{2,3,4}.pth file.")
    return state


def from_pretrained(weights: str | os.PathLike | None = None, scale: int = 4) -> CFSR:
    """The official model in eval mode; refuses weights trained for another scale."""
    check_scale(scale)
    path = resolve_weights(weights, scale)
    state = _load_state_dict(path)
    ckpt_scale = round((state["upsample.0.weight"].shape[0] / 3) ** 0.5)
    if ckpt_scale != scale:
        raise EdgekitError(f"{path} holds x{ckpt_scale} weights but x{scale} was requested. "
                           f"Pass --scale {ckpt_scale} or the CFSR_x{scale}.pth checkpoint.")
    model = CFSR(scale)
    model.load_state_dict(state)
    return model.eval()


def example_inputs(height: int = 64, width: int = 64) -> tuple[torch.Tensor]:
    """One LR tile; compiled artifacts take exactly this shape."""
    return (torch.rand(1, 3, height, width),)


def compile_models() -> dict:
    """`edgekit compile --model superres.NAME` (the default, x4, is named in spec.py): {name: builder() ->
    CompileSpec}; one 64x64 tile, weights from $EDGEKIT_WEIGHTS. Its int8 recipe (quantize.int8_options), used by
    `--quantize int8` without --calibration: Set14 tiles from $EDGEKIT_DATA, PSNR-Y gated."""
    def recipe(scale: int) -> QuantRecipe:
        options = _int8(scale)
        return QuantRecipe(options["calibration"], metric=options["task_metric"], max_drop=options["max_drop"],
                           auto_fallback=options["auto_fallback"])

    return {f"x{s}": (lambda s=s: CompileSpec(from_pretrained(scale=s), example_inputs(), int8=lambda: recipe(s)))
            for s in SCALES}


def _int8(scale: int) -> dict:
    set14 = paths.data("sr", "Set14")
    if not set14.is_dir():
        raise EdgekitError(f"int8 CFSR calibrates on Set14 HR images, not found at {set14}: set EDGEKIT_DATA to the "
                           "folder holding sr/Set14, or pass --calibration DIR with .npy LR tiles (then without a "
                           "PSNR gate).")
    return int8_options(set14, scale, example_inputs()[0].shape[-1])
