"""Quantization: config -> registered transform per backend, chosen layers kept in float, gated on accuracy.

    quantize_(model, Int8WeightOnly(group_size=32))       # torch-level, in place
    compile_model(m, x, backend="executorch", quantize="int8", calibration=[...], max_drop=0.001)
"""
from __future__ import annotations

import copy
import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.errors import EdgekitError

from ..source import FileSource, TorchSource
from .configs import CONFIGS, Int4WeightOnly, Int8Dynamic, Int8Static, Int8WeightOnly, QuantConfig, describe, parse
from .gate import TaskMetric

__all__ = ["CONFIGS", "Int8Static", "Int8WeightOnly", "Int4WeightOnly", "Int8Dynamic", "QuantPlan", "quantize_",
           "parse"]

_TRANSFORMS: dict[tuple[type, str], Callable] = {}
ALL_BACKENDS = ("executorch", "tvm", "onnxruntime")


def register(config_type: type, backends: tuple[str, ...]):
    def add(fn):
        for backend in backends:
            _TRANSFORMS[(config_type, backend)] = fn
        return fn
    return add


@dataclass
class QuantPlan:
    config: QuantConfig
    calibration: list[list[np.ndarray]]
    held_out: list[list[np.ndarray]]
    max_drop: float | None = None
    auto_fallback: bool = False
    task_metric: TaskMetric | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="edgekit-quant-")))
    simulator: object = None        # fakequant.Simulator, calibrated on first use
    fp32_outputs: dict = field(default_factory=dict)   # eager fp32 on the held-out samples, computed once
    layers: list[str] | None = None  # the int8 candidates, computed once
    key: str | None = None           # fingerprint(), computed once


def quantize_(model, config) -> list[str]:
    """torchao-style in-place weight-only quantization of a torch module; returns the layers replaced."""
    from .weight_only import quantize_linears

    config = parse(config)
    if isinstance(config, Int8Static):
        raise EdgekitError("int8 static quantization needs calibration data; use compile_model(..., quantize='int8', "
                           "calibration=[...]).")
    if isinstance(config, Int8Dynamic):
        raise EdgekitError(f"{config.name} quantizes activations inside a backend's kernels; use "
                           f"compile_model(..., quantize={config.name!r}) with backend executorch or onnxruntime.")
    return quantize_linears(model, config)


def apply(source: TorchSource, plan: QuantPlan, backend: str, skip: frozenset[str]):
    transform = _TRANSFORMS.get((type(plan.config), backend))
    if transform is None:
        offered = sorted(b for (config, b) in _TRANSFORMS if config is type(plan.config))
        raise EdgekitError(f"{plan.config.name} is not available for backend {backend!r} (it has no kernels for it "
                           f"here); use --backend {' or '.join(offered)}, or another --quantize scheme.")
    return transform(source, plan, skip)


def simulator(source: TorchSource, plan: QuantPlan):
    """The calibrated int8 simulation of the model: one calibration per model and samples in this process, so
    compiling for several backends calibrates once."""
    from .fakequant import Simulator

    if plan.simulator is None:
        key = fingerprint(source, plan)
        if key not in _SIMULATORS:
            _SIMULATORS[key] = Simulator(source.module, candidate_layers(source, plan), _tensors(plan.calibration),
                                         per_channel=plan.config.per_channel, percentile=plan.config.percentile)
        plan.simulator = _SIMULATORS[key]
    return plan.simulator


_SIMULATORS: dict = {}


def fingerprint(source: TorchSource, plan: QuantPlan) -> str:
    """What the quantization choices depend on: config, budget, metric, weights and samples (hashed once)."""
    if plan.key is None:
        h = hashlib.sha256(repr((describe(plan.config), plan.max_drop, plan.auto_fallback,
                                 getattr(plan.task_metric, "metric_name", plan.task_metric))).encode())
        for name, t in source.module.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        for sample in plan.calibration + plan.held_out:
            for x in sample:
                h.update(np.ascontiguousarray(x).tobytes())
        plan.key = h.hexdigest()
    return plan.key


def simulate(source: TorchSource, plan: QuantPlan, skip: frozenset[str], only: frozenset[str] | None = None):
    """A torch module that computes like the quantized artifact (fake-quant), for choosing float layers fast.
    Layers in int8: `only` if given, else every candidate not in `skip`."""
    layers = frozenset(candidate_layers(source, plan))
    int8 = (only if only is not None else layers) - skip
    if isinstance(plan.config, Int8Static):
        return simulator(source, plan).with_int8(int8)
    from .weight_only import quantize_linears

    model = copy.deepcopy(source.module)
    quantize_linears(model, _weight_config(plan.config), skip=layers - int8)
    return model


def _weight_config(config) -> Int8WeightOnly | Int4WeightOnly:
    """The weight rounding of a config (dynamic int8 simulates as its weights: activation rounding per token is far
    smaller than the weights' per-channel error)."""
    if not isinstance(config, Int8Dynamic):
        return config
    return Int8WeightOnly() if config.weight_bits == 8 else Int4WeightOnly(group_size=config.group_size or 32)


def candidate_layers(source: TorchSource, plan: QuantPlan) -> list[str]:
    from torch import nn

    from .fakequant import candidate_layers as conv_and_linear

    if isinstance(plan.config, Int8Static):
        if plan.layers is None:   # found by running the model once
            plan.layers = conv_and_linear(source.module, source.example_inputs)
        return plan.layers
    return [n for n, m in source.module.named_modules() if type(m) is nn.Linear]


def manifest_record(plan: QuantPlan, backend: str, skip: frozenset[str]) -> dict:
    compute = {"executorch": "conv/linear layers on int8 XNNPACK kernels; other ops fp32",
               "onnxruntime": "conv/linear layers as QLinearConv/QLinearMatMul (u8 activations, s8 weights); "
                              "other ops fp32",
               "tvm": "int8 weights and activations stored as QDQ; TVM dequantizes and computes in fp32 "
                      "(no int8 kernels in this TVM build's CPU path)"}
    record = {**describe(plan.config), "float_layers": sorted(skip), "calibration_samples": len(plan.calibration),
              "held_out_samples": len(plan.held_out)}
    if isinstance(plan.config, Int8Static):
        record["compute"] = compute[backend]
    elif isinstance(plan.config, Int8Dynamic) and backend == "executorch":
        record["compute"] = (f"Linear layers on XNNPACK's dynamically quantized kernels: int8 activations per token, "
                             f"{plan.config.weight_bits}-bit weights per output channel")
    elif isinstance(plan.config, Int8Dynamic):
        record["compute"] = (f"Linear layers as MatMulNBits with int8 activations (accuracy_level 4): "
                             f"{_bits(plan.config)}-bit weights packed in blocks of {ort_block_size(plan.config)} "
                             "input rows")
    elif backend == "onnxruntime":
        record["compute"] = (f"Linear layers as MatMulNBits: {_bits(plan.config)}-bit weights packed in blocks of "
                             f"{ort_block_size(plan.config)} input rows, dequantized inside the GEMM")
    else:
        record["compute"] = "integer weights dequantized to fp32 at run time"
    return record


def _tensors(samples: list[list[np.ndarray]]) -> list[tuple]:
    import torch

    return [tuple(torch.from_numpy(x) for x in s) for s in samples]


def _int8_layers(source: TorchSource, plan: QuantPlan, skip: frozenset[str]) -> frozenset[str]:
    return frozenset(candidate_layers(source, plan)) - skip


@register(Int8Static, ("executorch",))
def _int8_pt2e(source: TorchSource, plan: QuantPlan, skip: frozenset[str]) -> TorchSource:
    from .pt2e import quantize_pt2e

    module = quantize_pt2e(source.module, source.example_inputs, _tensors(plan.calibration),
                           _int8_layers(source, plan, skip), simulator(source, plan).ranges(),
                           per_channel=plan.config.per_channel)
    return TorchSource(module, source.example_inputs, source.name)


@register(Int8Static, ("onnxruntime", "tvm"))
def _int8_qdq(source: TorchSource, plan: QuantPlan, skip: frozenset[str]) -> FileSource:
    from ..lower.onnxruntime import export_onnx
    from .ort import quantize_qdq

    fp32 = plan.workdir / "fp32.onnx"
    export_onnx(source, fp32)
    qdq = plan.workdir / f"{source.name}.int8.onnx"
    quantize_qdq(fp32, qdq, plan.calibration, _int8_layers(source, plan, skip), simulator(source, plan).ranges(),
                 per_channel=plan.config.per_channel)
    return FileSource(qdq, "onnx", source.name, [t.detach().numpy() for t in source.example_inputs])


@register(Int8WeightOnly, ("onnxruntime",))
@register(Int4WeightOnly, ("onnxruntime",))
@register(Int8Dynamic, ("onnxruntime",))
def _weight_only_ort(source: TorchSource, plan: QuantPlan, skip: frozenset[str]) -> FileSource:
    from ..lower.onnxruntime import export_onnx
    from .ort import quantize_weight_only

    fp32 = plan.workdir / "fp32.onnx"
    export_onnx(source, fp32)
    out = plan.workdir / f"{source.name}.{plan.config.name}.onnx"
    quantize_weight_only(fp32, out, _bits(plan.config), ort_block_size(plan.config), skip,
                         int8_activations=isinstance(plan.config, Int8Dynamic))
    return FileSource(out, "onnx", source.name, [t.detach().numpy() for t in source.example_inputs])


@register(Int8Dynamic, ("executorch",))
def _dynamic_pt2e(source: TorchSource, plan: QuantPlan, skip: frozenset[str]) -> TorchSource:
    from .pt2e import quantize_dynamic_pt2e

    module = quantize_dynamic_pt2e(source.module, source.example_inputs, _int8_layers(source, plan, skip),
                                   weight_bits=plan.config.weight_bits)
    return TorchSource(module, source.example_inputs, source.name)


def _bits(config) -> int:
    if isinstance(config, Int8Dynamic):
        return config.weight_bits
    return 8 if isinstance(config, Int8WeightOnly) else 4


def ort_block_size(config) -> int:
    """MatMulNBits' block of input rows per scale: the config's group size (a power of two >= 16), else 128."""
    size = config.group_size or ORT_DEFAULT_BLOCK
    if size < 16 or size & (size - 1):
        raise EdgekitError(f"group size {size} does not fit ONNX Runtime's MatMulNBits, which takes a power of two "
                           ">= 16; choose e.g. 32, 64 or 128.")
    return size


ORT_DEFAULT_BLOCK = 128  # Int8WeightOnly's per-channel default as MatMulNBits blocks (it has no per-channel form)


@register(Int8WeightOnly, ("executorch", "tvm"))
@register(Int4WeightOnly, ("executorch", "tvm"))
def _weight_only(source: TorchSource, plan: QuantPlan, skip: frozenset[str]) -> TorchSource:
    return TorchSource(simulate(source, plan, skip), source.example_inputs, source.name)
