"""A small Mamba-1 model (blocks as in Gu & Dao 2023) for export tests and the scan kernel swap.

`scan` is any function with the selective_scan contract: the exportable chunked_scan by default,
edgekit.kernels.selective_scan for the compiled host kernel.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F

from .decomposed import chunked_scan


class MambaBlock(nn.Module):
    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, scan=chunked_scan):
        super().__init__()
        d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.scan = scan
        self.norm = nn.RMSNorm(d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        # S4D-real initialisation: A[:, n] = -(n + 1).
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, hidden):
        """hidden [batch, L, d_model] -> same shape (residual included)."""
        length = hidden.shape[1]
        x, z = self.in_proj(self.norm(hidden)).transpose(1, 2).chunk(2, dim=1)  # [b, d_inner, L]
        x = F.silu(self.conv(x)[..., :length])  # causal: drop the right padding
        dt, B, C = self.x_proj(x.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # bias goes in as delta_bias
        y = self.scan(x, delta, -torch.exp(self.A_log), B.transpose(1, 2).contiguous(),
                      C.transpose(1, 2).contiguous(), D=self.D, z=z,
                      delta_bias=self.dt_proj.bias, delta_softplus=True)
        return hidden + self.out_proj(y.transpose(1, 2))


class TinyMamba(nn.Module):
    """Two Mamba blocks and a final norm over float features [batch, L, d_model]."""

    def __init__(self, d_model=32, n_layers=2, d_state=16, scan=chunked_scan):
        super().__init__()
        self.blocks = nn.ModuleList(MambaBlock(d_model, d_state, scan=scan) for _ in range(n_layers))
        self.norm = nn.RMSNorm(d_model)

    def forward(self, hidden):
        for block in self.blocks:
            hidden = block(hidden)
        return self.norm(hidden)
