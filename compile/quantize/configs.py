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


@dataclass(frozen=True)
class Int8Dynamic:
    """Linear layers with int8 activations quantized per token at run time (no calibration) and integer weights:
    8-bit per output channel, or 4-bit (`weight_bits=4`) per channel (ExecuTorch/XNNPACK qc4w) or in blocks of
    `group_size` input rows (ONNX Runtime's MatMulNBits). The integer GEMM kernels of the transformer case."""
    weight_bits: int = 8
    group_size: int | None = None
    version: int = 1
    name: str = "int8-dynamic"


INT4_DYNAMIC = Int8Dynamic(weight_bits=4, group_size=64, name="int4-dynamic")
CONFIGS = {c.name: c for c in (Int8Static(), Int8WeightOnly(), Int4WeightOnly(), Int8Dynamic(), INT4_DYNAMIC)}
QuantConfig = Int8Static | Int8WeightOnly | Int4WeightOnly | Int8Dynamic


def parse(name_or_config) -> QuantConfig:
    if isinstance(name_or_config, (Int8Static, Int8WeightOnly, Int4WeightOnly, Int8Dynamic)):
        return name_or_config
    if name_or_config not in CONFIGS:
        raise EdgekitError(f"unknown quantization {name_or_config!r}. Choose one of: {', '.join(CONFIGS)}.")
    return CONFIGS[name_or_config]


def describe(config) -> dict:
    return {"scheme": config.name, **asdict(config)}
