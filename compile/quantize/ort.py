"""int8 static QDQ quantization of an ONNX graph with ONNX Runtime's tooling, calibrated on user data."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of input tuples."""

    def __init__(self, names: list[str], samples: list[list[np.ndarray]]):
        self._it = iter([dict(zip(names, s)) for s in samples])

    def get_next(self):
        return next(self._it, None)


def onnx_nodes_of(onnx_path: Path, layers: frozenset[str]) -> list[str]:
    """ONNX node names that the torch exporter attributes to the given module names."""
    import onnx

    nodes = []
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = meta.get("pkg.torch.onnx.name_scopes", "")
        if any(f"'{layer}'" in scopes for layer in layers):
            nodes.append(node.name)
    return nodes


def quantize_qdq(fp32_onnx: Path, out: Path, samples: list[list[np.ndarray]], *, per_channel: bool = True,
                 skip: frozenset[str] = frozenset()) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepped = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32_onnx), str(prepped), skip_optimization=True, skip_symbolic_shape=True)
    names = [i.name for i in ort.InferenceSession(str(prepped), providers=["CPUExecutionProvider"]).get_inputs()]
    try:
        quantize_static(str(prepped), str(out), _Reader(names, samples), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=onnx_nodes_of(prepped, skip),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    finally:
        prepped.unlink(missing_ok=True)
