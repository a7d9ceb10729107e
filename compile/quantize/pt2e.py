"""int8 static PTQ in PyTorch 2 export form (prepare_pt2e / convert_pt2e) with XNNPACK's quantizer.

The converted module carries quantize/dequantize pairs that ExecuTorch's XNNPACK partitioner folds into
int8 kernels; run eagerly it simulates int8, which is what the per-layer sensitivity analysis uses.
"""
from __future__ import annotations

import torch

from ..export import quiet_torch_logs


def quantizable_layers(module: torch.nn.Module) -> list[str]:
    """Layers the XNNPACK quantizer annotates (conv / linear), by module name, in definition order."""
    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)
    return [name for name, m in module.named_modules() if isinstance(m, kinds) and name]


def quantize_pt2e(module, example_inputs: tuple, calibration: list[tuple], *, per_channel: bool = True,
                  skip: frozenset[str] = frozenset(), only: frozenset[str] | None = None):
    """int8 everywhere except `skip` (or, with `only`, just those layers); returns the converted GraphModule."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    quantizer.set_filter_function(_layer_filter(skip, only))
    with torch.no_grad(), quiet_torch_logs():
        graph = torch.export.export(module, example_inputs).module()
        prepared = prepare_pt2e(graph, quantizer)
        for sample in calibration:
            prepared(*sample)
        return convert_pt2e(prepared)


def _layer_filter(skip: frozenset[str], only: frozenset[str] | None):
    """Node filter by the module that produced it (torch.export keeps the module path in nn_module_stack)."""
    def owners(node) -> set[str]:
        return {path for path, _ in node.meta.get("nn_module_stack", {}).values()}

    if only is not None:
        return lambda node: bool(owners(node) & only)
    return lambda node: not (owners(node) & skip)
