"""The bundled model: small, seeded, and made of the ops that matter on edge devices
(Conv2d + LayerNorm + nn.MultiheadAttention + GELU). Used by `make demo` and the tests."""
from __future__ import annotations


def conv_attention(image_size: int = 32, channels: int = 32, heads: int = 4, seed: int = 0):
    """Returns (module, example_inputs) as `edgekit compile --model FILE.py:FUNC` expects."""
    import torch
    from torch import nn

    class ConvAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, channels, 3, stride=2, padding=1)
            self.norm = nn.LayerNorm(channels)
            self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels))

        def forward(self, x):
            tokens = self.conv(x).flatten(2).transpose(1, 2)
            h = self.norm(tokens)
            attended, _ = self.attn(h, h, h, need_weights=False)
            tokens = tokens + attended
            return tokens + self.mlp(tokens)

    torch.manual_seed(seed)
    return ConvAttention().eval(), (torch.randn(1, 3, image_size, image_size),)
