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


def quantize_weight_only(fp32_onnx: Path, out: Path, bits: int, block_size: int, skip: frozenset[str], *,
                         int8_activations: bool = False) -> list[str]:
    """Linear layers' MatMuls -> ONNX Runtime's MatMulNBits: the weights stored packed (`bits` per value, one fp32
    scale per block of `block_size` input rows) and dequantized inside the GEMM, so memory traffic falls with the
    payload. int8_activations: accuracy_level 4, the kernel quantizes activations per block to int8 at run time and
    multiplies in integers. Layers named in `skip` stay float. Returns the ONNX nodes quantized."""
    import logging

    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    graph = onnx.load(str(fp32_onnx))
    owner = node_layers(graph)
    exclude = [n.name for n in graph.graph.node if owner.get(n.name) in skip]
    quantize_tied_embeddings(graph, bits, block_size, int8_activations, frozenset(exclude))
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, bits=bits,
                                                accuracy_level=4 if int8_activations else None)
    quantizer = nbits.MatMulNBitsQuantizer(graph, nodes_to_exclude=exclude, algo_config=config)
    level = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").level
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line a node
    try:
        quantizer.process()
    finally:
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(level)
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return [n.name for n in quantizer.model.model.graph.node if n.op_type == "MatMulNBits"]


def quantize_tied_embeddings(model, bits: int, block_size: int, int8_activations: bool, exclude: frozenset[str]):
    """A weight W that is both an embedding table (Gather(W, ids)) and, transposed, an output projection
    (MatMul(x, Transpose(W)), Whisper's logits) is packed once: GatherBlockQuantized reads the rows it needs and
    MatMulNBits multiplies with the same uint8 blocks (symmetric, zero point 2^(bits-1), as MatMulNBits stores
    them). MatMulNBitsQuantizer alone would pack only the projection and leave the float table beside it.
    Edits `model` in place; returns the weights packed."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT}
    producers = {o: n for n in graph.node for o in n.output}
    ranks = _ranks(model)
    packed = []
    for name, tensor in weights.items():
        users = [n for n in graph.node if name in n.input]
        gathers = [n for n in users if n.op_type == "Gather" and n.input[0] == name and _axis(n) == 0
                   and n.input[1] in ranks and n.name not in exclude]
        transposes = [n for n in users if n.op_type == "Transpose" and list(_perm(n)) == [1, 0]]
        matmuls = [m for t in transposes for m in graph.node if m.op_type == "MatMul" and m.input[1] == t.output[0]
                   and m.name not in exclude]
        if not gathers or not matmuls or not all(n.name for n in users + matmuls) or \
                len(users) != len(gathers) + len(transposes) or \
                any(producers.get(m.input[1]) not in transposes for m in matmuls):
            continue
        w = numpy_helper.to_array(tensor)
        rows, width = w.shape
        if width % block_size:
            continue
        data, scales = _pack_blocks(w, bits, block_size)
        graph.initializer.remove(tensor)
        graph.initializer.extend([numpy_helper.from_array(data, f"{name}_q{bits}"),
                                  numpy_helper.from_array(scales, f"{name}_scales"),
                                  numpy_helper.from_array(scales[..., None], f"{name}_scales_rows")])
        replacement = {t.name: [] for t in transposes}
        for g in gathers:
            shape = numpy_helper.from_array(np.array([0] * ranks[g.input[1]] + [width], np.int64), f"{g.name}_shape")
            graph.initializer.append(shape)
            replacement[g.name] = [
                helper.make_node("GatherBlockQuantized", [f"{name}_q{bits}", g.input[1], f"{name}_scales_rows"],
                                 [f"{g.output[0]}_blocks"], name=f"{g.name}_quantized", domain="com.microsoft",
                                 gather_axis=0, quantize_axis=2, block_size=block_size, bits=bits),
                helper.make_node("Reshape", [f"{g.output[0]}_blocks", shape.name], [g.output[0]],
                                 name=f"{g.name}_rows")]
        for m in matmuls:
            replacement[m.name] = [helper.make_node(
                "MatMulNBits", [m.input[0], f"{name}_q{bits}", f"{name}_scales"], list(m.output),
                name=f"{m.name}_Q{bits}", domain="com.microsoft", K=width, N=rows, bits=bits, block_size=block_size,
                **({"accuracy_level": 4} if int8_activations else {}))]
        _replace_nodes(graph, replacement)
        packed.append(name)
    if packed and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return packed


def _pack_blocks(w, bits: int, block_size: int):
    """(uint8 [rows, blocks, bytes per block], fp32 scales [rows, blocks]) in MatMulNBits' symmetric layout."""
    import numpy as np

    rows, width = w.shape
    qmax, zero = 2 ** (bits - 1) - 1, 2 ** (bits - 1)
    blocks = w.reshape(rows, width // block_size, block_size)
    scales = np.maximum(np.abs(blocks).max(-1), 1e-12) / qmax
    q = (np.clip(np.round(blocks / scales[..., None]), -qmax - 1, qmax) + zero).astype(np.uint8)
    if bits == 4:   # two values a byte, the first in the low nibble
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return np.ascontiguousarray(q), scales.astype(np.float32)


def _ranks(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input):
        if v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    return ranks


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _perm(node):
    return next((a.ints for a in node.attribute if a.name == "perm"), [])


def _replace_nodes(graph, replacement: dict) -> None:
    """Each node named in `replacement` gives way, in place, to its list of new nodes (topological order kept)."""
    nodes = []
    for n in graph.node:
        nodes.extend(replacement.get(n.name, [n]))
    del graph.node[:]
    graph.node.extend(nodes)
