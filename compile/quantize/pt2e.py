"""int8 static PTQ in PyTorch 2 export form (prepare_pt2e / convert_pt2e) with XNNPACK's quantizer.

Only the conv / linear layers are annotated (input, per-channel weight, output): XNNPACK runs them as int8
kernels and everything between them (norms, GELU, residual adds) stays float, which is where per-tensor int8
loses the most (residual streams carry channel outliers) for the least speed. Activation ranges are those the
simulator calibrated (fakequant.py), written into the observers, so the artifact matches the simulation.
"""
from __future__ import annotations

import dataclasses

import torch

from ..export import quiet_torch_logs
from .fakequant import Range


def quantize_pt2e(module, example_inputs: tuple, calibration: list[tuple], layers: frozenset[str],
                  ranges: dict[str, tuple[Range, Range]], *, per_channel: bool = True):
    """`layers` in int8, the rest float; returns the converted GraphModule."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import QuantizationConfig

    base = get_symmetric_quantization_config(is_per_channel=per_channel)
    act = dataclasses.replace(base.input_activation,
                              observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    config = QuantizationConfig(act, act, base.weight, base.bias, base.is_qat)
    quantizer = XNNPACKQuantizer().set_global(config)
    quantizer.set_filter_function(_layer_filter(layers))
    with torch.no_grad(), quiet_torch_logs():
        graph = torch.export.export(module, example_inputs).module()
        prepared = prepare_pt2e(graph, quantizer)
        for sample in calibration:   # fills the weight observers and any activation not set below
            prepared(*sample)
        _set_ranges(prepared, layers, ranges)
        return _private_dequantize(convert_pt2e(prepared))


def quantize_dynamic_pt2e(module, example_inputs: tuple, layers: frozenset[str], *, weight_bits: int = 8):
    """`layers` (Linear) with int8 activations quantized per token at run time and `weight_bits` symmetric per-channel
    weights: XNNPACK's qd8-f32-qc8w / qc4w kernels once lowered; the rest float. No calibration: only the weight
    observers run (on the example inputs)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    qmax = 2 ** (weight_bits - 1) - 1
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True, weight_qmin=-qmax - 1,
                                               weight_qmax=qmax)
    quantizer = XNNPACKQuantizer().set_global(config)
    quantizer.set_filter_function(_layer_filter(layers))
    with torch.no_grad(), quiet_torch_logs():
        prepared = prepare_pt2e(torch.export.export(module, example_inputs).module(), quantizer)
        prepared(*example_inputs)
        return convert_pt2e(prepared)


def _private_dequantize(gm):
    """One dequantize node per user. convert_pt2e copies a shared dequantize only for annotated users, so an
    unannotated op (CFSR's `conv_after_body(...) + shallow`, both int8 layer outputs, feeding int8 `upsample.0`)
    shares one with float ops; XNNPACK then claims it for that op's partition, whose path leaves and re-enters
    the partition ("Invalid partition, found dependency cycles")."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or "dequantize" not in str(node.target) or len(node.users) < 2:
            continue
        for user in list(node.users)[1:]:
            with gm.graph.inserting_after(node):
                copy = gm.graph.node_copy(node)
            user.replace_input_with(node, copy)
    gm.recompile()
    return gm


def _owner(node) -> str | None:
    """The innermost module a node came from (torch.export keeps the module path in nn_module_stack)."""
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else None


def _layer_filter(layers: frozenset[str]):
    # the annotator also passes the weight/bias nodes, which carry no module stack
    return lambda node: node.op != "call_function" or _owner(node) in layers


def _set_ranges(prepared, layers: frozenset[str], ranges: dict[str, tuple[Range, Range]]) -> None:
    """Write the simulator's ranges into the observers on each quantized layer's input and output."""
    from torchao.quantization.pt2e import MinMaxObserver

    def observer(node):
        if node.op == "call_module":
            mod = prepared.get_submodule(node.target)
            if isinstance(mod, MinMaxObserver):
                return mod
        return None

    for node in prepared.graph.nodes:
        layer = _owner(node) if node.op == "call_function" else None
        if layer not in layers or not any(observer(u) for u in node.users):
            continue
        r_in, r_out = ranges[layer]
        targets = [(observer(node.args[0]), r_in)] + [(observer(u), r_out) for u in node.users]
        for obs, r in targets:
            if obs is not None:
                obs.min_val.fill_(r.lo)
                obs.max_val.fill_(r.hi)
