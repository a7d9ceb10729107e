"""Which layers stay in float: measure the whole-model drop, and when it is over budget rank layers by how
much they cost alone (sensitivity) and return the most sensitive ones to float until the drop fits."""
from __future__ import annotations

import numpy as np

from edgekit.errors import EdgekitError

from ..source import TorchSource
from . import QuantPlan, candidate_layers, simulate
from .gate import Score, score, sensitivity_report


def torch_runner(module):
    import torch

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(x) for x in inputs])
        return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]
    return run


def simulated_score(source: TorchSource, plan: QuantPlan, skip=frozenset(), only=None) -> Score:
    return score(torch_runner(source.module), torch_runner(simulate(source, plan, skip, only)),
                 plan.held_out, plan.task_metric)


def sensitivity(source: TorchSource, plan: QuantPlan) -> list[tuple[str, float]]:
    rows = [(layer, simulated_score(source, plan, only=frozenset([layer])).drop)
            for layer in candidate_layers(source, plan)]
    return sorted(rows, key=lambda r: r[1], reverse=True)


def choose_float_layers(source: TorchSource, plan: QuantPlan) -> frozenset[str]:
    if plan.max_drop is None:
        return frozenset()
    whole = simulated_score(source, plan)
    if whole.drop <= plan.max_drop:
        return frozenset()
    rows = sensitivity(source, plan)
    if not plan.auto_fallback:
        raise EdgekitError(sensitivity_report(rows, whole.drop, plan.max_drop, whole.metric))
    skip: set[str] = set()
    for layer, _ in rows:
        skip.add(layer)
        if simulated_score(source, plan, frozenset(skip)).drop <= plan.max_drop:
            return frozenset(skip)
    raise EdgekitError(f"{whole.metric} drop stays above {plan.max_drop:g} even with every layer in float; "
                       "the loss is not in the quantized layers. Raise --max-drop or compile without --quantize.")


def check_final(source: TorchSource, plan: QuantPlan, run_artifact) -> Score:
    """The figure that ships: the real artifact on the held-out samples against fp32 eager."""
    final = score(torch_runner(source.module), run_artifact, plan.held_out, plan.task_metric)
    if plan.max_drop is not None and final.drop > plan.max_drop:
        raise EdgekitError(sensitivity_report(sensitivity(source, plan), final.drop, plan.max_drop, final.metric)
                           + "\n(measured on the compiled artifact; nothing was written)")
    return final
