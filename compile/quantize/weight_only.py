"""Weight-only int8 / int4 for nn.Linear: integer weights + scales as buffers, dequantised in forward.

Exportable as plain torch ops so every backend takes it; the payload shrinks because the float weight is gone.
"""
from __future__ import annotations

import torch
from torch import nn

from edgekit.errors import EdgekitError

from .configs import Int4WeightOnly, Int8WeightOnly


class QuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, bits: int, group_size: int | None):
        super().__init__()
        w = linear.weight.detach().float()
        out_f, in_f = w.shape
        group = group_size or in_f
        if in_f % group:
            raise EdgekitError(f"group size {group} does not divide in_features {in_f} of a Linear layer; "
                               "choose a divisor (e.g. 32 or 64).")
        qmax = 2 ** (bits - 1) - 1
        grouped = w.reshape(out_f, in_f // group, group)
        scale = grouped.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
        q = torch.clamp(torch.round(grouped / scale), -qmax - 1, qmax).to(torch.int8)
        self.register_buffer("qweight", q)            # int4 values kept in int8 storage (packing is future work)
        self.register_buffer("scale", scale.to(torch.float32))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.shape = (out_f, in_f)

    def forward(self, x):
        weight = (self.qweight.to(torch.float32) * self.scale).reshape(self.shape)
        return nn.functional.linear(x, weight, self.bias)


def quantize_linears(model: nn.Module, config: Int8WeightOnly | Int4WeightOnly, skip: frozenset[str] = frozenset()):
    """Replace every nn.Linear (except names in `skip`) in place; returns the names replaced."""
    if type(model) is nn.Linear:
        raise EdgekitError("quantize_ replaces Linear layers inside a module in place; pass the module that holds "
                           "the Linear (e.g. wrap it in nn.Sequential).")
    bits = 8 if isinstance(config, Int8WeightOnly) else 4
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and full not in skip:
                setattr(module, child_name, QuantLinear(child, bits, config.group_size))
                replaced.append(full)
    return replaced
