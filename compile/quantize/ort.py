"""int8 static QDQ quantization of an ONNX graph with ONNX Runtime's tooling.

Only the nodes of the chosen conv / linear layers are quantized, with the simulator's activation ranges
(fakequant.py) as tensor overrides, so ONNX Runtime, TVM (which imports this graph) and the simulation agree.
Activations are uint8: ONNX Runtime's x86 kernels are u8 x s8 (VPMADDUBSW / VNNI); with int8 activations it
fuses only some DQ-Conv-Q groups into QLinearConv and the rest run as float Conv between Q/DQ pairs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from .fakequant import Range

QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# ops whose ONNX output is the module's output (a Linear exported as MatMul + Add is not: the bias comes after)
_OUTPUT_IS_MODULE_OUTPUT = ("Conv", "ConvTranspose", "Gemm")


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of input tuples."""

    def __init__(self, names: list[str], samples: list[list[np.ndarray]]):
        self._it = iter([dict(zip(names, s)) for s in samples])

    def get_next(self):
        return next(self._it, None)


def node_layers(model) -> dict[str, str]:
    """ONNX node name -> the innermost torch module the exporter attributes it to."""
    layers = {}
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = meta.get("pkg.torch.onnx.name_scopes")
        if scopes:
            names = ast.literal_eval(scopes)
            if len(names) >= 2:
                layers[node.name] = names[-2]    # the last entry is the op itself
    return layers


def quantize_qdq(fp32_onnx: Path, out: Path, samples: list[list[np.ndarray]], layers: frozenset[str],
                 ranges: dict[str, tuple[Range, Range]], *, per_channel: bool = True) -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepped = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32_onnx), str(prepped), skip_optimization=True, skip_symbolic_shape=True)
    graph = onnx.load(str(prepped), load_external_data=False)
    owner = node_layers(graph)
    nodes = [n for n in graph.graph.node if n.op_type in QUANTIZED_OPS and owner.get(n.name) in layers]
    overrides = {}
    for n in nodes:
        r_in, r_out = ranges[owner[n.name]]
        overrides.setdefault(n.input[0], [_override(r_in)])
        if n.op_type in _OUTPUT_IS_MODULE_OUTPUT:
            overrides.setdefault(n.output[0], [_override(r_out)])
    names = [i.name for i in ort.InferenceSession(str(prepped), providers=["CPUExecutionProvider"]).get_inputs()]
    try:
        if nodes:
            quantize_static(str(prepped), str(out), _Reader(names, samples), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=[n.name for n in nodes],
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                           "TensorQuantOverrides": overrides})
        else:   # every layer kept in float
            prepped.replace(out)
    finally:
        prepped.unlink(missing_ok=True)


def _override(r: Range) -> dict:
    return {"rmin": np.array(r.lo, dtype=np.float32), "rmax": np.array(r.hi, dtype=np.float32)}
