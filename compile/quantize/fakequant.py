"""int8 static quantization simulated on the torch module: the calibration and the fast model of it.

Every candidate layer (Conv / Linear module) is wrapped once. Two passes over the calibration samples
record the range of each layer's input and output (min/max, then a histogram for the percentile range);
those ranges are what the backends use too (PT2E observers and ONNX Runtime's tensor overrides are set from
them), so the simulation computes like the artifact up to kernel rounding. Afterwards any set of layers can
be switched between int8 and float without recalibrating, which makes per-layer sensitivity cheap.

Arithmetic of a quantized layer: input and output fake-quantized per tensor, asymmetric, 256 levels;
weights per output channel (per tensor without per_channel), symmetric, [-127, 127].
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

BINS = 2048
KINDS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@dataclass
class Range:
    lo: float
    hi: float


class _Stats:
    """min/max in pass 1, a histogram over [min, max] in pass 2."""

    def __init__(self):
        self.lo, self.hi, self.hist = float("inf"), float("-inf"), None

    def observe(self, x: torch.Tensor, second_pass: bool) -> None:
        x = x.detach().float()
        if not second_pass:
            self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
            return
        h = torch.histc(x, BINS, self.lo, self.hi) if self.hi > self.lo else torch.zeros(BINS)
        self.hist = h if self.hist is None else self.hist + h

    def range(self, percentile: float | None) -> Range:
        if percentile is None or self.hist is None or not self.hist.sum() > 0:
            return Range(self.lo, self.hi)
        cdf = np.cumsum(self.hist.double().numpy()) / float(self.hist.sum())
        tail = (100.0 - percentile) / 200.0   # cut on each side, as ONNX Runtime's Percentile calibration
        edges = np.linspace(self.lo, self.hi, BINS + 1)
        lo = edges[np.searchsorted(cdf, tail)]
        hi = edges[min(np.searchsorted(cdf, 1.0 - tail) + 1, BINS)]
        return Range(max(float(lo), self.lo), min(float(hi), self.hi))


def fake_quant(x: torch.Tensor, r: Range) -> torch.Tensor:
    lo, hi = min(r.lo, 0.0), max(r.hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    zero = round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def fake_quant_weight(w: torch.Tensor, per_channel: bool, axis: int = 0) -> torch.Tensor:
    dims = tuple(d for d in range(w.dim()) if d != axis) if per_channel else tuple(range(w.dim()))
    scale = w.abs().amax(dim=dims, keepdim=True).clamp(min=1e-12) / 127.0
    return torch.clamp(torch.round(w / scale), -127, 127) * scale


class _Layer(nn.Module):
    def __init__(self, inner: nn.Module, per_channel: bool):
        super().__init__()
        self.inner = inner
        self.quant = copy.deepcopy(inner)
        axis = 1 if isinstance(inner, nn.ConvTranspose2d) else 0
        with torch.no_grad():
            self.quant.weight.copy_(fake_quant_weight(inner.weight, per_channel, axis))
        self.stats_in, self.stats_out = _Stats(), _Stats()
        self.observing: bool | None = False    # False: first pass, True: second pass, None: done
        self.enabled = False
        self.r_in = self.r_out = None

    def forward(self, x):
        if self.observing is not None:
            y = self.inner(x)
            self.stats_in.observe(x, self.observing)
            self.stats_out.observe(y, self.observing)
            return y
        if not self.enabled:
            return self.inner(x)
        return fake_quant(self.quant(fake_quant(x, self.r_in)), self.r_out)


class Simulator:
    def __init__(self, module: nn.Module, layers: list[str], calibration: list[tuple], *, per_channel: bool = True,
                 percentile: float | None = None):
        self.model = copy.deepcopy(module).eval()
        self.layers: dict[str, _Layer] = {}
        for name in layers:
            parent, _, child = name.rpartition(".")
            owner = self.model.get_submodule(parent) if parent else self.model
            wrapped = _Layer(getattr(owner, child), per_channel)
            setattr(owner, child, wrapped)
            self.layers[name] = wrapped
        for second_pass in (False, True) if percentile is not None else (False,):
            for layer in self.layers.values():
                layer.observing = second_pass
            with torch.no_grad():
                for sample in calibration:
                    self.model(*sample)
        for layer in self.layers.values():
            layer.observing = None
            layer.r_in, layer.r_out = layer.stats_in.range(percentile), layer.stats_out.range(percentile)

    def ranges(self) -> dict[str, tuple[Range, Range]]:
        """(input range, output range) of every candidate layer: what the backends quantize with."""
        return {name: (layer.r_in, layer.r_out) for name, layer in self.layers.items()}

    def with_int8(self, layers) -> nn.Module:
        """The simulated model with exactly `layers` in int8 (the others float)."""
        for name, layer in self.layers.items():
            layer.enabled = name in layers
        return self.model


def candidate_layers(module: nn.Module, example_inputs: tuple) -> list[str]:
    """Layers quantized to int8: conv / linear modules whose own forward runs (nn.MultiheadAttention, say,
    reads its out_proj weights inside a functional call, so that Linear is never called and stays float),
    by module name, in definition order."""
    called = set()
    hooks = [m.register_forward_hook(lambda mod, args, out: called.add(id(mod)))
             for m in module.modules() if isinstance(m, KINDS)]
    try:
        with torch.no_grad():
            module(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return [name for name, m in module.named_modules() if isinstance(m, KINDS) and name and id(m) in called]
