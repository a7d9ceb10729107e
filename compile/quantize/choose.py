"""Which layers stay in float: measure the whole-model drop, and when it is over budget rank layers by how
much they cost alone (sensitivity) and return the most sensitive ones to float until the drop fits."""
from __future__ import annotations

import dataclasses

import numpy as np

from edgekit.errors import EdgekitError

from ..source import TorchSource
from . import QuantPlan, candidate_layers, fingerprint, simulate
from .gate import Score, score, sensitivity_report


def torch_runner(module):
    import torch

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(x) for x in inputs])
        return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]
    return run


def fp32_runner(source: TorchSource, plan: QuantPlan):
    """Eager fp32 on the held-out samples, computed once per plan (every score compares against it)."""
    run = torch_runner(source.module)
    cache = plan.fp32_outputs

    def cached(inputs: list[np.ndarray]) -> list[np.ndarray]:
        key = tuple(id(x) for x in inputs)
        if key not in cache:
            cache[key] = (inputs, run(inputs))   # inputs kept alive so their ids stay unique
        return cache[key][1]
    return cached


def simulated_score(source: TorchSource, plan: QuantPlan, skip=frozenset(), only=None) -> Score:
    return score(fp32_runner(source, plan), torch_runner(simulate(source, plan, skip, only)),
                 plan.held_out, plan.task_metric)


# Per-layer ranking runs the model once per layer per sample: a few samples rank well enough, and every
# figure that decides (the fallback set, the shipped score) is measured on the whole held-out split.
RANKING_SAMPLES = 8


def sensitivity(source: TorchSource, plan: QuantPlan) -> list[tuple[str, float]]:
    """(layer, metric drop with only that layer in int8), worst first, on the first RANKING_SAMPLES held-out;
    remembered like choose_float_layers."""
    key = fingerprint(source, plan)
    if key not in _RANKED:
        ranking = dataclasses.replace(plan, held_out=plan.held_out[:RANKING_SAMPLES])
        rows = [(layer, simulated_score(source, ranking, only=frozenset([layer])).drop)
                for layer in candidate_layers(source, plan)]
        _RANKED[key] = sorted(rows, key=lambda r: r[1], reverse=True)
    return _RANKED[key]


def choose_float_layers(source: TorchSource, plan: QuantPlan) -> frozenset[str]:
    """Remembered per (model, samples, config, budget) in this process: compiling one model for several
    backends measures once."""
    if plan.max_drop is None:
        return frozenset()
    key = fingerprint(source, plan)
    if key not in _CHOSEN:
        _CHOSEN[key] = _choose(source, plan)
    return _CHOSEN[key]


def more_float_layers(source: TorchSource, plan: QuantPlan, skip: frozenset[str]) -> frozenset[str] | None:
    """A longer prefix of fallback_order than `skip` (1, 1, 2, 4 ... more layers on successive calls), or None
    when every layer is already float."""
    key = fingerprint(source, plan)
    ranked = fallback_order(source, plan)
    if len(skip) >= len(ranked):
        return None
    extra = max(1, len(skip) - len(_CHOSEN.get(key, frozenset())))  # 1, then 2, 4, ... beyond the first choice
    wider = frozenset(ranked[:len(skip) + extra]) | skip
    return wider if wider != skip else None


_CHOSEN: dict[str, frozenset[str]] = {}
_RANKED: dict[str, list[tuple[str, float]]] = {}


def fallback_order(source: TorchSource, plan: QuantPlan) -> list[str]:
    """Layers in the order they go back to float: accuracy lost per int8 weight, worst first. Float layers cost
    payload, so a big layer whose int8 costs little stays int8 while small, sensitive ones return to float."""
    size = {name: m.weight.numel() for name, m in source.module.named_modules() if hasattr(m, "weight")}
    rows = sensitivity(source, plan)
    return [layer for layer, _ in sorted(rows, key=lambda r: r[1] / max(size.get(r[0], 1), 1), reverse=True)]


def _choose(source: TorchSource, plan: QuantPlan) -> frozenset[str]:
    whole = simulated_score(source, plan)
    if whole.drop <= plan.max_drop:
        return frozenset()
    rows = sensitivity(source, plan)
    if not plan.auto_fallback:
        raise EdgekitError(sensitivity_report(rows, whole.drop, plan.max_drop, whole.metric)
                           + layer_table(source, plan, frozenset()))
    ranked = fallback_order(source, plan)

    def fits(k: int) -> bool:
        return simulated_score(source, plan, frozenset(ranked[:k])).drop <= plan.max_drop

    if not fits(len(ranked)):
        raise EdgekitError(f"{whole.metric} drop stays above {plan.max_drop:g} even with every layer in float; "
                           "the loss is not in the quantized layers. Raise --max-drop or compile without --quantize.")
    # the fewest worst-ranked layers in float that fit: bisection (the drop falls as layers return to float);
    # the answer is itself measured, so a non-monotone step can cost a layer more, never the budget
    lo, hi = 0, len(ranked)   # fits(hi) holds, fits(0) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return frozenset(ranked[:hi])


class GateFailed(EdgekitError):
    """The compiled artifact's accuracy figure is over the budget."""


def check_final(source: TorchSource, plan: QuantPlan, run_artifact, skip=frozenset()) -> Score:
    """The figure that ships: the real artifact on the held-out samples against fp32 eager (`skip`: its float
    layers, for the report's layer table)."""
    final = score(fp32_runner(source, plan), run_artifact, plan.held_out, plan.task_metric)
    if plan.max_drop is not None and final.drop > plan.max_drop:
        hint = ("\n(measured on the compiled artifact, after returning layers to float up to the rebuild limit; "
                "nothing was written)" if plan.auto_fallback else "\n(measured on the compiled artifact; nothing "
                "was written)")
        raise GateFailed(sensitivity_report(sensitivity(source, plan), final.drop, plan.max_drop, final.metric,
                                            plan.auto_fallback)
                         + hint + layer_table(source, plan, skip))
    return final


def layer_table(source: TorchSource, plan: QuantPlan, skip: frozenset[str]) -> str:
    """`edgekit inspect`'s table for the worst layers (lowest SQNR against fp32 eager) of the quantized model, as
    the fake-quant simulation computes it on the first held-out sample."""
    import torch

    from ..layers import simulated_table

    sample = [torch.from_numpy(x) for x in plan.held_out[0]]
    text = simulated_table(source.module, simulate(source, plan, skip), sample)
    return (f"\nWorst layers (edgekit inspect, {plan.config.name} simulation vs fp32 eager, one held-out sample):"
            f"\n{text}") if text else ""
