"""Quantization configs: small versioned dataclasses. The registry maps each to its transform per backend."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class Int8Static:
    """Post-training static int8 of conv / linear layers: per-channel symmetric weights, per-tensor asymmetric
    activations whose range keeps `percentile` % of the calibration values (None: min/max); other ops float.
    v2: conv/linear only (v1 also quantized adds and muls) and percentile ranges (v1: min/max)."""
    per_channel: bool = True
    percentile: float | None = 99.99
    version: int = 2
    name: str = "int8"


@dataclass(frozen=True)
class Int8WeightOnly:
    """int8 weights (per output channel, or per group of input columns), float activations; Linear layers."""
    group_size: int | None = None
    version: int = 1
    name: str = "int8-weight-only"


@dataclass(frozen=True)
class Int4WeightOnly:
    """int4 weights in groups along the input dimension, float activations; Linear layers."""
    group_size: int = 32
    version: int = 1
    name: str = "int4-weight-only"


CONFIGS = {c.name: c for c in (Int8Static(), Int8WeightOnly(), Int4WeightOnly())}


def parse(name_or_config) -> Int8Static | Int8WeightOnly | Int4WeightOnly:
    if isinstance(name_or_config, (Int8Static, Int8WeightOnly, Int4WeightOnly)):
        return name_or_config
    if name_or_config not in CONFIGS:
        raise EdgekitError(f"unknown quantization {name_or_config!r}. Choose one of: {', '.join(CONFIGS)}.")
    return CONFIGS[name_or_config]


def describe(config) -> dict:
    return {"scheme": config.name, **asdict(config)}
