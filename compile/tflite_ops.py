"""Torch modules for the TFLite ops edgekit imports.

Inside the imported graph every 4-D tensor is NCHW (what torch's conv and pool kernels want);
the importer converts at the model boundary so callers still see TFLite's NHWC.
"""

import torch
import torch.nn.functional as F
from torch import nn

# The NHWC axes in NCHW order: x_nchw = x_nhwc.permute(NCHW_ORDER).
NCHW_ORDER = (0, 3, 1, 2)


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite SAME padding for one spatial axis as (before, after); the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Activation(nn.Module):
    """A TFLite fused activation (NONE, RELU, RELU_N1_TO_1, RELU6)."""

    BOUNDS = {0: None, 1: (0.0, None), 2: (-1.0, 1.0), 3: (0.0, 6.0)}

    def __init__(self, code: int):
        super().__init__()
        self.bounds = self.BOUNDS[code]

    def forward(self, x):
        if self.bounds is None:
            return x
        low, high = self.bounds
        return torch.clamp(x, low, high) if high is not None else torch.clamp(x, min=low)


class Conv(nn.Module):
    """CONV_2D / DEPTHWISE_CONV_2D: explicit padding (TFLite SAME may be asymmetric), conv, fused activation."""

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int, int, int], activation: Activation):
        super().__init__()
        self.conv, self.pad, self.activation = conv, pad, activation

    def forward(self, x):
        if any(self.pad):
            x = F.pad(x, self.pad)
        return self.activation(self.conv(x))


class MaxPool(nn.Module):
    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int, int, int],
                 activation: Activation):
        super().__init__()
        self.kernel, self.stride, self.pad, self.activation = kernel, stride, pad, activation

    def forward(self, x):
        if any(self.pad):
            x = F.pad(x, self.pad, value=float("-inf"))
        return self.activation(F.max_pool2d(x, self.kernel, self.stride))


class Add(nn.Module):
    def __init__(self, activation: Activation):
        super().__init__()
        self.activation = activation

    def forward(self, a, b):
        return self.activation(a + b)


class Pad(nn.Module):
    def __init__(self, pad: tuple[int, ...]):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x, self.pad)


class Reshape(nn.Module):
    """RESHAPE follows TFLite's NHWC element order, so 4-D tensors go back to NHWC around it."""

    def __init__(self, shape: tuple[int, ...], input_rank: int):
        super().__init__()
        self.shape, self.input_rank = shape, input_rank

    def forward(self, x):
        if self.input_rank == 4:
            x = x.permute(0, 2, 3, 1)
        x = x.reshape(self.shape)
        return x.permute(0, 3, 1, 2) if len(self.shape) == 4 else x


class Concat(nn.Module):
    def __init__(self, dim: int, activation: Activation):
        super().__init__()
        self.dim, self.activation = dim, activation

    def forward(self, *xs):
        return self.activation(torch.cat(xs, dim=self.dim))


class DepthToSpace(nn.Module):
    """TFLite's DEPTH_TO_SPACE orders channels block-row, block-column, channel (torch's pixel_shuffle differs)."""

    def __init__(self, block: int):
        super().__init__()
        self.block = block

    def forward(self, x):
        n, c, h, w = x.shape
        b = self.block
        x = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        return x.reshape(n, c // (b * b), h * b, w * b)


class ResizeBilinear(nn.Module):
    def __init__(self, size: tuple[int, int], align_corners: bool):
        super().__init__()
        self.size, self.align_corners = size, align_corners

    def forward(self, x):
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=self.align_corners)


class Logistic(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x)
